//! Writes a config file with N random rules (the generator of the
//! differential tests), for `nva check` timings and benchmarks:
//!
//!     cargo run --release -p nva-userspace --example gen-rules -- 10000 > /tmp/10k.toml
//!     nva check --config /tmp/10k.toml

use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(n as u64);
    let mut rng = Rng::new(seed);
    let gen = RuleGen::new(&mut rng, n);
    println!("# {n} random rules, seed {seed} (nva-userspace/examples/gen-rules.rs)");
    println!("[agent]\ninterfaces = [\"eth0\", \"eth1\"]\n");
    println!("[policy]\ndefault = \"drop\"\n");
    print!("{}", rules_toml(&gen.rules(&mut rng, n)));
}
