//! Writes a config file with N random rules (the generator of the
//! differential tests), for `nva check` timings and benchmarks:
//!
//!     cargo run --release -p nva-userspace --example gen-rules -- 10000 > /tmp/10k.toml
//!     nva check --config /tmp/10k.toml

use nva::model::{Action, Cidr, PortRange, Proto};
use nva::rulegen::{Rng, RuleGen, IFACES};

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = items.iter().map(|i| format!("\"{}\"", f(i))).collect();
    format!("[{}]", parts.join(", "))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(n as u64);
    let mut rng = Rng::new(seed);
    let gen = RuleGen::new(&mut rng, n);
    println!("# {n} random rules, seed {seed} (nva-userspace/examples/gen-rules.rs)");
    println!(
        "[agent]\ninterfaces = [{}]\n",
        list(&IFACES, |s| s.to_string()).trim_matches(|c| c == '[' || c == ']')
    );
    println!("[policy]\ndefault = \"drop\"\n");
    for r in gen.rules(&mut rng, n) {
        println!("[[rules]]\nname = \"{}\"", r.name);
        println!(
            "action = \"{}\"",
            if r.action == Action::Allow {
                "allow"
            } else {
                "drop"
            }
        );
        let proto = match r.proto {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        };
        println!("proto = \"{proto}\"");
        let cidrs = |c: &Cidr| c.to_string();
        let ports = |p: &PortRange| {
            if p.lo == p.hi {
                p.lo.to_string()
            } else {
                format!("{}-{}", p.lo, p.hi)
            }
        };
        if !r.src.is_empty() {
            println!("src = {}", list(&r.src, cidrs));
        }
        if !r.dst.is_empty() {
            println!("dst = {}", list(&r.dst, cidrs));
        }
        if !r.sport.is_empty() {
            println!("sport = {}", list(&r.sport, ports));
        }
        if !r.dport.is_empty() {
            println!("dport = {}", list(&r.dport, ports));
        }
        if !r.icmp_type.is_empty() {
            let types: Vec<String> = r.icmp_type.iter().map(|t| t.to_string()).collect();
            println!("icmp_type = [{}]", types.join(", "));
        }
        if let Some(iface) = &r.in_iface {
            println!("in_iface = \"{iface}\"");
        }
        println!();
    }
}
