//! Config fuzzing: valid agent and failover config files, mutated the ways
//! files go wrong (truncated, junk inserted, tables and keys duplicated,
//! values of the wrong type, huge numbers, invalid addresses and ranges,
//! bytes that are not UTF-8). Whatever the mutation, the parsers never
//! panic, and every refusal names `FILE:LINE:COL` inside the file.

use std::path::Path;

use nva::configfile::ConfigError;
use nva::failover::config::{load_failover_config, parse_failover_config};
use nva::policy::config::{load_config, parse_config};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

/// Every feature of the agent's config.
const AGENT: &str = r#"
[agent]
interfaces = ["eth0", "eth1"]
xdp_mode = "auto"
forward = "kernel"
health_listen = "0.0.0.0:9090"
tcp_probe_listen = "0.0.0.0:9091"
health_interval_ms = 500
bpffs = "/sys/fs/bpf/nva"

[policy]
default = "drop"
stateful = true
management = ["tcp/22", "udp/161"]
loose_tcp = false
fragments = "drop"
log_drops = true
conntrack_max = 65536

[policy.timeouts]
tcp_established = 3600
udp = 30


[[rules]]
name = "web"
action = "allow"
proto = "tcp"
src = ["0.0.0.0/0", "::/0"]
dst = ["10.0.2.0/24", "fd00:2::/64"]
dport = ["80", "443", "8000-8999"]
in_iface = "eth0"
log = true

[[rules]]
name = "ping"
action = "allow"
proto = "icmp"
icmp_type = [8]

[[rules]]
name = "block"
action = "drop"
src = ["192.0.2.0/24"]

[[nat]]
name = "public-in"
kind = "dnat"
proto = "tcp"
dst = ["10.0.1.4/32"]
dport = ["443"]
to = "10.0.2.10:8443"

[[nat]]
name = "egress"
kind = "snat"
src = ["10.0.2.0/24"]
to = "10.0.1.4"
to_ports = "20000-59999"

[sync]
listen = "10.99.1.11:7800"
peer = "10.99.1.12:7800"
key_file = "/etc/nva/sync.key"
interval_ms = 100
"#;

const FAILOVER: &str = include_str!("../../scripts/failover-example.toml");
const EXAMPLE: &str = include_str!("../../scripts/example.toml");

/// What replaces a value: wrong types, huge and negative numbers, invalid
/// addresses, prefixes, ports and ranges, empty and odd strings.
const VALUES: &[&str] = &[
    "\"x\"",
    "\"\"",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-1",
    "0",
    "1e999",
    "true",
    "[]",
    "[1, \"a\"]",
    "{ a = 1 }",
    "\"999.1.1.1\"",
    "\"10.0.0.0/40\"",
    "\"10.0.0.1/8\"",
    "\"fd00::/129\"",
    "\"::ffff:1.2.3.4\"",
    "\"65536\"",
    "\"80-70\"",
    "\"0-0\"",
    "\"1.2.3.4:99999\"",
    "\"[::1]:\"",
    "\"http://\"",
    "\"drop\"",
    "1979-05-27T07:32:00Z",
    "\"\\u0000\"",
    "\"a\\nb\"",
];

/// What gets inserted: TOML's own syntax out of place, and noise.
const JUNK: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "==",
    "{",
    "}",
    ",",
    "#",
    "\n",
    "\r",
    "\t",
    "\\",
    "\n[agent]\n",
    "\n[[rules]]\n",
    "\n[policy]\ndefault = \"allow\"\n",
    "\u{0}",
    "\u{feff}",
    "é",
    "😀",
    "x = 1\n",
    "a.b.c = 2\n",
    "\n[[nat]]\nname = \"x\"\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Insert(usize, &'static str),
    DuplicateLine(usize),
    ReplaceValue(usize, &'static str),
    DeleteLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::sample::select(JUNK)).prop_map(|(a, j)| Mutation::Insert(a, j)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), prop::sample::select(VALUES))
            .prop_map(|(a, v)| Mutation::ReplaceValue(a, v)),
        any::<usize>().prop_map(Mutation::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len();
    let by_line = !matches!(m, Mutation::Truncate(_) | Mutation::Insert(..));
    if n == 0 && by_line {
        return text.to_string();
    }
    match *m {
        Mutation::Truncate(at) => text[..boundary(text, at)].to_string(),
        Mutation::Insert(at, junk) => {
            let at = boundary(text, at);
            format!("{}{junk}{}", &text[..at], &text[at..])
        }
        Mutation::DuplicateLine(i) => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
            lines.join("\n")
        }
        Mutation::ReplaceValue(i, value) => {
            // The i-th `key = value` line (a table header or comment
            // otherwise stays).
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&k| lines[k].contains(" = ") && !lines[k].trim_start().starts_with('#'))
                .collect();
            if let Some(&k) = assignments.get(i % assignments.len().max(1)) {
                let key = lines[k].split(" = ").next().unwrap_or_default().to_string();
                lines[k] = format!("{key} = {value}");
            }
            lines.join("\n")
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            lines.swap(a % n, b % n);
            lines.join("\n")
        }
    }
}

/// A refusal must place every problem inside the file.
fn placed(errors: &[ConfigError], file: &str, text: &str) -> Result<(), String> {
    if errors.is_empty() {
        return Err("refused without an error".into());
    }
    let lines = text.split('\n').count();
    for e in errors {
        let shown = e.to_string();
        let prefix = format!("{file}:{}:{}: ", e.line, e.col);
        if e.line == 0 || e.col == 0 || e.line > lines || !shown.starts_with(&prefix) {
            return Err(format!("not at a place in the file: {shown:?}"));
        }
        if e.message.trim().is_empty() || e.message.contains('\n') {
            return Err(format!("not one line of explanation: {shown:?}"));
        }
    }
    Ok(())
}

fn fuzz(name: &str, base: &str, parse: fn(&str, &str) -> Result<(), Vec<ConfigError>>, cases: u32) {
    parse("f.toml", base).unwrap_or_else(|e| panic!("{name}: the base file is valid: {e:?}"));
    // A fixed seed: the same mutations every run.
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = prop::collection::vec(mutation(), 1..4);
    runner
        .run(&strategy, |ms| {
            let mut text = base.to_string();
            for m in &ms {
                text = apply(&text, m);
            }
            if let Err(errors) = parse("f.toml", &text) {
                placed(&errors, "f.toml", &text).map_err(|e| {
                    TestCaseError::fail(format!("{name}: {e}\n--- the file:\n{text}"))
                })?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

fn agent(file: &str, text: &str) -> Result<(), Vec<ConfigError>> {
    parse_config(file, text).map(|_| ())
}

fn failover(file: &str, text: &str) -> Result<(), Vec<ConfigError>> {
    parse_failover_config(file, text).map(|_| ())
}

#[test]
fn mutated_agent_configs_are_refused_with_a_place_and_never_panic() {
    fuzz("agent config", AGENT, agent, 4000);
    fuzz("scripts/example.toml", EXAMPLE, agent, 2000);
}

#[test]
fn mutated_failover_configs_are_refused_with_a_place_and_never_panic() {
    fuzz("failover config", FAILOVER, failover, 4000);
}

/// A byte that is not UTF-8, anywhere: refused at its place, from a file.
#[test]
fn bytes_that_are_not_utf8_are_refused_at_their_place() {
    let dir = std::env::temp_dir().join(format!("nva-config-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nva.toml");
    let file = path.display().to_string();
    type Load = fn(&Path) -> Result<(), Vec<ConfigError>>;
    let loads: [(&str, Load); 2] = [
        (AGENT, |p| load_config(p).map(|_| ())),
        (FAILOVER, |p| load_failover_config(p).map(|_| ())),
    ];
    for (base, load) in loads {
        for at in (0..base.len()).step_by(97) {
            let mut bytes = base.as_bytes().to_vec();
            bytes.insert(at, 0xff);
            std::fs::write(&path, &bytes).unwrap();
            let errors = load(&path).expect_err("refused");
            let valid = std::str::from_utf8(&bytes[..at]).unwrap();
            placed(&errors, &file, valid).unwrap();
            let (line, col) = nva::configfile::line_col(valid, at);
            assert_eq!((errors[0].line, errors[0].col), (line, col));
            assert!(errors[0].message.contains("not UTF-8"), "{}", errors[0]);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
