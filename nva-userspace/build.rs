// Builds the XDP program (nva-ebpf) with the nightly toolchain and bpf-linker;
// the object lands in OUT_DIR and is embedded into the `nva` binary.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["locate-project", "--workspace", "--message-format=plain"])
        .output()
        .context("cargo locate-project")?;
    let workspace_toml = String::from_utf8(metadata.stdout)?;
    let root = std::path::Path::new(workspace_toml.trim())
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .to_path_buf();
    let ebpf_dir = root.join("nva-ebpf");
    let common_dir = root.join("nva-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nva-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
