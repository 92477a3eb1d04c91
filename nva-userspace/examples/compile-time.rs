//! Times the rule compiler alone on a generated rule set (three runs), for
//! profiling it apart from the agent:
//!
//!     cargo run --release -p nva-userspace --example compile-time -- acl 100000
//!
//! Shapes: `acl`, `fw`, `ipc` (ClassBench-like) or `random` (the generator
//! of the differential tests).

use nva::classifier::compiler::compile;
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::policy::model::{Action, PolicySettings};

fn main() {
    let mut args = std::env::args().skip(1);
    let shape = args.next().unwrap_or_else(|| "acl".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut rng = Rng::new(0xac1 ^ ((n as u64) << 1));
    let rules = match shape.as_str() {
        "acl" => ClassBench::new(Shape::Acl, &mut rng, n).rules(&mut rng, n),
        "fw" => ClassBench::new(Shape::Fw, &mut rng, n).rules(&mut rng, n),
        "ipc" => ClassBench::new(Shape::Ipc, &mut rng, n).rules(&mut rng, n),
        "random" => RuleGen::new(&mut rng, n).rules(&mut rng, n),
        other => {
            eprintln!("unknown shape {other:?}: acl, fw, ipc or random");
            std::process::exit(2);
        }
    };
    let policy = PolicySettings::with_default(Action::Drop);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        match compile(&rules, &policy) {
            Ok(c) => println!("{:.3} s: {}", started.elapsed().as_secs_f64(), c.sizes),
            Err(e) => println!("{:.3} s: {e}", started.elapsed().as_secs_f64()),
        }
    }
}
