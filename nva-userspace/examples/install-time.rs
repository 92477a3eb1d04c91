//! Times installs of two generated rule sets into an unpinned data path,
//! one after the other (as reloads swap them), for profiling the install
//! apart from the agent (needs root: it loads the XDP program):
//!
//!     cargo run --release -p nva-userspace --example install-time -- acl 100000
//!
//! Prints each install's time until the switch and the time after it
//! (freeing the old slot). Shapes: `acl` (ClassBench-like) or `random`.

use nva::classifier::compiler::{compile, CompiledRuleSet};
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::datapath::DataPath;
use nva::policy::model::{Action, PolicySettings};

fn main() {
    let mut args = std::env::args().skip(1);
    let shape = args.next().unwrap_or_else(|| "acl".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let sets: Vec<CompiledRuleSet> = (0..2u64)
        .map(|which| {
            let mut rng = Rng::new(0xac1 ^ ((n as u64) << 1) ^ which);
            let rules = match shape.as_str() {
                "acl" => ClassBench::new(Shape::Acl, &mut rng, n).rules(&mut rng, n),
                _ => RuleGen::new(&mut rng, n).rules(&mut rng, n),
            };
            compile(&rules, &PolicySettings::with_default(Action::Drop)).expect("compiles")
        })
        .collect();
    let mut dp = DataPath::load(&sets[0], 1, &|_| None).expect("load the data path");
    let counters: Vec<u32> = (0..n as u32 + 1).collect();
    for generation in 2..6u64 {
        let set = &sets[generation as usize % 2];
        let started = std::time::Instant::now();
        let after = dp
            .install(set, &Default::default(), generation, &counters, &|_| None)
            .expect("install");
        let total = started.elapsed();
        println!(
            "generation {generation}: live after {:.0} ms, old slot freed in {:.0} ms",
            (total - after).as_secs_f64() * 1e3,
            after.as_secs_f64() * 1e3
        );
    }
}
