//! `nva check`: validate a config file without touching the kernel.

use std::path::Path;
use std::process::ExitCode;

use nva::classifier::compiler::compile;

use super::load_or_report;

pub(crate) fn check(path: &Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let started = std::time::Instant::now();
    match compile(&config.rules, &config.policy) {
        Ok(compiled) => {
            println!(
                "{}: ok: {} rules, {} interfaces; tables: {}; compiled in {:.1} ms",
                path.display(),
                config.rules.len(),
                config.agent.interfaces.len(),
                compiled.sizes,
                started.elapsed().as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
