//! Writes a config file with N random rules (the generator of the
//! differential tests) or ClassBench-like rules, for `nva check` timings and
//! benchmarks:
//!
//!     cargo run --release -p nva-userspace --example gen-rules -- 10000 > /tmp/10k.toml
//!     cargo run --release -p nva-userspace --example gen-rules -- 100000 7 acl > /tmp/acl.toml
//!     nva check --config /tmp/10k.toml
//!
//! Arguments: rule count, seed (default: the count), shape (`random`, the
//! default, or `acl`, `fw`, `ipc`).

use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(n as u64);
    let shape = args.next().unwrap_or_else(|| "random".into());
    let mut rng = Rng::new(seed);
    let rules = match shape.as_str() {
        "random" => RuleGen::new(&mut rng, n).rules(&mut rng, n),
        "acl" => ClassBench::new(Shape::Acl, &mut rng, n).rules(&mut rng, n),
        "fw" => ClassBench::new(Shape::Fw, &mut rng, n).rules(&mut rng, n),
        "ipc" => ClassBench::new(Shape::Ipc, &mut rng, n).rules(&mut rng, n),
        other => {
            eprintln!("unknown shape {other:?}: random, acl, fw or ipc");
            std::process::exit(2);
        }
    };
    println!("# {n} {shape} rules, seed {seed} (nva-userspace/examples/gen-rules.rs)");
    println!("[agent]\ninterfaces = [\"eth0\", \"eth1\"]\n");
    println!("[policy]\ndefault = \"drop\"\n");
    print!("{}", rules_toml(&rules));
}
