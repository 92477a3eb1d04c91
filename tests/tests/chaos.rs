//! The short chaos run of `cargo xtask test` (issue "Hardening" §5): every
//! kind of fault at least once, in the failover lab, with a fixed seed;
//! `cargo xtask chaos` runs it longer with random seeds. No invariant may be
//! violated (see `nva_tests::chaos`).

use nva_tests::chaos::{run, ChaosOptions, FAULTS};
use nva_tests::require_root;

#[test]
fn faults_at_random_violate_no_failover_invariant() {
    require_root();
    let seconds = std::env::var("NVA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed = std::env::var("NVA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e76_615f_6368_616f);
    eprintln!("chaos: seed {seed:#x}, {seconds} s of faults");
    let report = run(&ChaosOptions {
        seconds,
        seed,
        tag: "x",
    });
    eprintln!("chaos (seed {seed:#x}): {}", report.summary());
    for f in FAULTS {
        assert!(
            report.faults.iter().any(|i| i.fault == f),
            "{f:?} was injected"
        );
    }
    assert!(
        report.switches > 0,
        "the faults made the daemons switch at least once"
    );
    assert!(
        report.violations.is_empty(),
        "seed {seed:#x}: {}",
        report.summary()
    );
}
