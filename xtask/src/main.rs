//! Project tasks: `cargo xtask setup | build | test | run | bench | lab`.
//!
//! Everything a fresh machine needs to build and test nva is installed by
//! `setup`; `test` and `run` call it first, and it returns quickly when
//! nothing is missing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// bpf-linker release whose LLVM matches the installed nightly (see TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the build, the tests and the lab rely on:
/// (what shows it is installed, package name).
const DEBIAN_PACKAGES: &[(Probe, &str)] = &[
    // C code built by crates: ring (TLS) and mimalloc (the agent's allocator).
    (Probe::Cmd("cc"), "gcc"),
    (Probe::Cmd("ip"), "iproute2"),
    (Probe::Cmd("nft"), "nftables"),
    (Probe::Cmd("iptables"), "iptables"),
    (Probe::Cmd("iperf3"), "iperf3"),
    (Probe::Cmd("tcpdump"), "tcpdump"),
    (Probe::Cmd("bpftool"), "bpftool"),
    (Probe::Cmd("nc"), "netcat-openbsd"),
    (Probe::Cmd("ping"), "iputils-ping"),
    (Probe::Cmd("ethtool"), "ethtool"),
    (Probe::Cmd("promtool"), "prometheus"),
    (Probe::File("/usr/share/java/zookeeper.jar"), "zookeeper"),
];

enum Probe {
    Cmd(&'static str),
    File(&'static str),
}

#[derive(Parser)]
#[command(name = "xtask", about = "nva project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// Build the workspace (the eBPF object is built by nva-userspace/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run all tests one at a time (needs root).
    Test {
        /// Extra arguments for the test binaries (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then bring up the HA lab (no arguments), or run `nva`
    /// with the given arguments (needs root).
    Run {
        /// Arguments for `nva`, e.g. `-- agent --config FILE`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build (release), then run the benchmarks (needs root); the
    /// report goes to target/bench/report.md (and .json, plots).
    Bench {
        /// Small sizes and few repeats (what `test` runs so the harness
        /// cannot rot); the figures of a quick run mean little.
        #[arg(long)]
        quick: bool,
        /// Only these parts (repeatable): classify, memory, endtoend, swap,
        /// nat, sync, forward, failover; all of them by default.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Packet fuzzing for a given time (needs root): the data path against
    /// its reference on mutated frames, with random seeds; a failing frame
    /// is kept in tests/fuzz-cases/ (replayed by `cargo xtask test`).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Frames per seed.
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
    },
    /// Chaos in the failover lab (needs root): faults injected at random
    /// (agent kills, detaches, link flaps, frozen daemons, daemons cut off
    /// from ZooKeeper, the ZooKeeper leader killed during a switch, health
    /// seen by one daemon only) while the failover invariants are checked;
    /// each round has its own random seed, printed for replay.
    Chaos {
        /// How long to inject faults in all.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Length of one round (a fresh lab and seed each).
        #[arg(long, default_value_t = 120)]
        round: u64,
        /// Replay one round with this seed instead.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The HA lab: `up` (what `run` without arguments does) or `down`
    /// (remove what a killed lab left behind).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    add_cargo_bin_to_path();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Setup => setup().map(|()| ExitCode::SUCCESS),
        Cmd::Build { release } => build(release),
        Cmd::Test { args } => test(&args),
        Cmd::Run { args } => run(&args),
        Cmd::Bench { quick, only } => bench(quick, &only),
        Cmd::Lab { args } => lab(&args),
        Cmd::Fuzz { seconds, frames } => fuzz(seconds, frames),
        Cmd::Chaos {
            seconds,
            round,
            seed,
        } => chaos(seconds, round, seed),
    }
}

// ---------------------------------------------------------------- commands

fn setup() -> Result<()> {
    println!("xtask setup: checking toolchain and system packages");
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_debian_packages()?;
    println!("xtask setup: done");
    Ok(())
}

fn build(release: bool) -> Result<ExitCode> {
    let mut args = vec!["build", "--workspace", "--exclude", "nva-ebpf"];
    if release {
        args.push("--release");
    }
    status_code(cargo().args(&args))
}

fn test(extra: &[String]) -> Result<ExitCode> {
    require_root("test")?;
    warn_if_disk_short();
    setup()?;
    let code = build(false)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    // Style gates first: formatting and clippy, as the house rules demand.
    let code = status_code(cargo().args(["fmt", "--all", "--", "--check"]))?;
    if code != ExitCode::SUCCESS {
        eprintln!("xtask test: `cargo fmt --all` needed");
        return Ok(code);
    }
    // Every crate, the XDP program's included (checked on the host).
    let code = status_code(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "nva-ebpf",
        // No doc tests: there are none, and their empty run would be the
        // last summary line CI reads.
        "--lib",
        "--bins",
        "--tests",
        "--",
        "--test-threads=1",
    ]);
    cmd.args(extra);
    let code = status_code(&mut cmd)?;
    if code != ExitCode::SUCCESS || !extra.is_empty() {
        return Ok(code);
    }
    // The quick benchmark, from the debug build just made: it checks that
    // the harness still produces its report, not the figures.
    let report = target_dir().join("bench-quick");
    let code = status_code(
        Command::new(target_dir().join("debug").join("nva-bench"))
            .arg("--quick")
            .arg("--out")
            .arg(&report),
    )?;
    if code == ExitCode::SUCCESS && !report.join("report.md").is_file() {
        bail!("the quick benchmark wrote no report");
    }
    Ok(code)
}

fn bench(quick: bool, only: &[String]) -> Result<ExitCode> {
    require_root("bench")?;
    setup()?;
    let code = status_code(cargo().args([
        "build",
        "--release",
        "-p",
        "nva-bench",
        "-p",
        "nva-userspace",
    ]))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let mut cmd = Command::new(target_dir().join("release").join("nva-bench"));
    // The lab's agents and daemons: the release `nva` built just now.
    cmd.env("NVA_BIN", target_dir().join("release").join("nva"));
    if quick {
        cmd.arg("--quick");
    }
    for part in only {
        cmd.args(["--only", part]);
    }
    cmd.arg("--out").arg(target_dir().join("bench"));
    status_code(&mut cmd)
}

/// A seed from the clock, for rounds with random seeds.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `cargo test` of one nva-tests test file, its output shown.
fn nva_test(file: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "nva-tests",
        "--test",
        file,
        "--",
        "--nocapture",
    ]);
    cmd
}

fn chaos(seconds: u64, round: u64, seed: Option<u64>) -> Result<ExitCode> {
    require_root("chaos")?;
    setup()?;
    let code = build(false)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let started = std::time::Instant::now();
    let mut rounds = 0;
    loop {
        let this_seed = seed.unwrap_or_else(clock_seed);
        let left = seconds.saturating_sub(started.elapsed().as_secs()).max(1);
        let length = round.min(left);
        println!(
            "xtask chaos: round {}, seed {this_seed}, {length} s of faults ({} s of {seconds} s done)",
            rounds + 1,
            started.elapsed().as_secs()
        );
        let code = status_code(
            nva_test("chaos")
                .env("NVA_CHAOS_SEED", this_seed.to_string())
                .env("NVA_CHAOS_SECONDS", length.to_string()),
        )?;
        rounds += 1;
        if code != ExitCode::SUCCESS {
            println!(
                "xtask chaos: round {rounds} (seed {this_seed}) failed; replay it with \
                 `cargo xtask chaos --seed {this_seed} --round {length}`"
            );
            return Ok(code);
        }
        if seed.is_some() || started.elapsed().as_secs() >= seconds {
            break;
        }
    }
    println!("xtask chaos: {rounds} rounds, no invariant violated");
    Ok(ExitCode::SUCCESS)
}

fn fuzz(seconds: u64, frames: u64) -> Result<ExitCode> {
    require_root("fuzz")?;
    setup()?;
    let started = std::time::Instant::now();
    let (mut seeds, mut total) = (0u64, 0u64);
    while started.elapsed().as_secs() < seconds {
        // A fresh seed from the clock (the test prints it on failure).
        let seed = clock_seed();
        println!(
            "xtask fuzz: seed {seed:#x}, {frames} frames ({} s of {seconds} s, {total} frames so far)",
            started.elapsed().as_secs()
        );
        let code = status_code(
            nva_test("packet_fuzz")
                .env("NVA_FUZZ_SEED", seed.to_string())
                .env("NVA_FUZZ_FRAMES", frames.to_string())
                .env("NVA_FUZZ_SAVE", "1"),
        )?;
        if code != ExitCode::SUCCESS {
            println!("xtask fuzz: seed {seed:#x} found a frame the data path and its reference disagree on (kept in tests/fuzz-cases/)");
            return Ok(code);
        }
        seeds += 1;
        total += frames;
    }
    println!("xtask fuzz: {total} frames over {seeds} seeds, no disagreement");
    Ok(ExitCode::SUCCESS)
}

fn run(args: &[String]) -> Result<ExitCode> {
    require_root("run")?;
    setup()?;
    let code = build(false)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    if args.is_empty() {
        // The HA lab: namespaces, two agents, ZooKeeper, two failover
        // daemons, traffic, shown live; Ctrl-C tears it down.
        return status_code(Command::new(target_dir().join("debug").join("nva-lab")).arg("up"));
    }
    status_code(Command::new(target_dir().join("debug").join("nva")).args(args))
}

fn lab(args: &[String]) -> Result<ExitCode> {
    require_root("lab")?;
    match args.first().map(String::as_str) {
        Some("down") => {
            let lab = target_dir().join("debug").join("nva-lab");
            if !lab.is_file() {
                let code = build(false)?;
                if code != ExitCode::SUCCESS {
                    return Ok(code);
                }
            }
            status_code(Command::new(lab).arg("down"))
        }
        Some("up") | None => run(&[]),
        Some(other) => bail!("unknown lab command {other:?}; expected `up` or `down`"),
    }
}

// ---------------------------------------------------------------- setup steps

fn ensure_rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is rustup installed and on PATH?)")?;
    if out.status.success() {
        let listed = String::from_utf8_lossy(&out.stdout);
        if listed.lines().any(|l| l.trim().starts_with("rust-src")) {
            println!("  ok       nightly rust-src");
            return Ok(());
        }
        println!("  install  rustup component add rust-src --toolchain nightly");
        return check_status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    println!("  install  rustup toolchain install nightly --profile minimal -c rust-src");
    check_status(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn ensure_bpf_linker() -> Result<()> {
    let found = find_command("bpf-linker");
    if let Some(path) = &found {
        let version = Command::new(path)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) {
            println!("  ok       bpf-linker {BPF_LINKER_VERSION}");
            return Ok(());
        }
        println!(
            "  replace  bpf-linker at {} reports {:?}, need {BPF_LINKER_VERSION}",
            path.display(),
            version
        );
    }
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    println!("  install  cargo install {spec} --locked (takes a few minutes)");
    let mut cmd = Command::new(cargo_program());
    cmd.args(["install", &spec, "--locked"]);
    if found.is_some() {
        cmd.arg("--force");
    }
    check_status(&mut cmd)
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(probe, _)| match probe {
            Probe::Cmd(c) => find_command(c).is_none(),
            Probe::File(f) => !Path::new(f).exists(),
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        println!(
            "  ok       Debian packages ({} checked)",
            DEBIAN_PACKAGES.len()
        );
        return Ok(());
    }
    println!("  install  Debian packages: {}", missing.join(" "));
    if !is_root()? {
        bail!(
            "installing Debian packages needs root; run as root or install: apt-get install {}",
            missing.join(" ")
        );
    }
    println!("  run      apt-get update");
    check_status(Command::new("apt-get").args(["update", "-q"]))?;
    println!("  run      apt-get install -y {}", missing.join(" "));
    check_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

// ---------------------------------------------------------------- helpers

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo command run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root());
    cmd
}

fn cargo_home_bin() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// bpf-linker (and whatever `cargo install` puts there) must be found by the
/// eBPF build that aya-build starts, so `~/.cargo/bin` goes on PATH for every
/// child process.
fn add_cargo_bin_to_path() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let before = dirs.len();
    if let Some(bin) = cargo_home_bin() {
        if !dirs.contains(&bin) {
            dirs.insert(0, bin);
        }
    }
    // Root's tools (ip, nft, bpftool) live in sbin, which a CI PATH may lack.
    for sbin in ["/usr/sbin", "/sbin"].map(PathBuf::from) {
        if !dirs.contains(&sbin) {
            dirs.push(sbin);
        }
    }
    if dirs.len() != before {
        if let Ok(joined) = std::env::join_paths(dirs) {
            std::env::set_var("PATH", joined);
        }
    }
}

fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_home_bin())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn is_root() -> Result<bool> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// What a clean `cargo xtask test` leaves in `target/` (measured: about
/// 6 GiB), with room to spare.
const TEST_DISK_NEED_GIB: u64 = 10;

/// Says so up front when the build may not fit: running out of disk half-way
/// ends in a linker crash ("Bus error") that names no cause.
fn warn_if_disk_short() {
    let dir = workspace_root();
    let Ok(out) = Command::new("df")
        .args(["--output=avail", "-B1", "--"])
        .arg(&dir)
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(avail) = text
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
    else {
        return;
    };
    let gib = avail >> 30;
    if gib < TEST_DISK_NEED_GIB {
        eprintln!(
            "xtask test: warning: only {gib} GiB free on the file system of {}; \
             a clean build and test run needs about {TEST_DISK_NEED_GIB} GiB \
             (`cargo clean` frees the old builds)",
            dir.display()
        );
    } else {
        println!("xtask test: {gib} GiB free for the build");
    }
}

fn require_root(what: &str) -> Result<()> {
    if !is_root()? {
        bail!(
            "`cargo xtask {what}` must run as root: it attaches XDP programs, \
             creates network namespaces and installs packages (try: sudo -E cargo xtask {what})"
        );
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd`, failing unless it exits 0.
fn check_status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and turns its exit status into ours.
fn status_code(cmd: &mut Command) -> Result<ExitCode> {
    use std::os::unix::process::ExitStatusExt;
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .expect("parses")
            .cmd
    }

    #[test]
    fn run_passes_arguments_after_double_dash() {
        match parse(&["run", "--", "agent", "--config", "f.toml"]) {
            Cmd::Run { args } => assert_eq!(args, ["agent", "--config", "f.toml"]),
            _ => panic!("not run"),
        }
        match parse(&["run"]) {
            Cmd::Run { args } => assert!(args.is_empty()),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn test_passes_extra_arguments() {
        match parse(&["test", "--", "--nocapture", "netns"]) {
            Cmd::Test { args } => assert_eq!(args, ["--nocapture", "netns"]),
            _ => panic!("not test"),
        }
    }

    #[test]
    fn bench_takes_parts() {
        match parse(&["bench", "--quick", "--only", "endtoend", "--only", "swap"]) {
            Cmd::Bench { quick, only } => {
                assert!(quick);
                assert_eq!(only, ["endtoend", "swap"]);
            }
            _ => panic!("not bench"),
        }
    }

    #[test]
    fn build_release_flag() {
        assert!(matches!(
            parse(&["build", "--release"]),
            Cmd::Build { release: true }
        ));
        assert!(matches!(parse(&["build"]), Cmd::Build { release: false }));
    }
}
