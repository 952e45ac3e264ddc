//! `contrib/eddy.service`, the systemd unit: checked by `systemd-analyze
//! verify` (where the machine has it), and its `ExecStart` run as systemd
//! would run it: the same words, its variables expanded the way systemd
//! expands them, the addresses overridden as a drop-in would (to
//! 127.0.0.1:0, as every test server), `$STATE_DIRECTORY` a directory of
//! the test's own. The hardening itself needs systemd as PID 1 to apply,
//! which this machine has not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const UNIT: &str = include_str!("../contrib/eddy.service");

/// The unit's `ExecStart` words, the program first.
fn exec_start() -> Vec<&'static str> {
    let line = UNIT
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace().collect()
}

/// Expands `word` as systemd does: `${NAME}` within a word, and `$NAME` as
/// a whole word, split at whitespace (zero words if empty).
fn expand(word: &str, env: &[(&str, &str)]) -> Vec<String> {
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not set"))
            .1
    };
    if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
        return value(name).split_whitespace().map(String::from).collect();
    }
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("a closing brace") + at;
        out.push_str(value(&rest[at + 2..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    vec![out]
}

/// A directory of the test's own, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The unit with `ExecStart`'s program replaced by `program`.
fn unit_running(program: &Path) -> String {
    UNIT.replace("/usr/local/bin/eddy", program.to_str().unwrap())
}

#[test]
fn the_unit_asks_for_what_the_deployment_needs() {
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=eddy",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
    ] {
        assert!(UNIT.contains(setting), "no {setting:?} in the unit");
    }
    let words = exec_start();
    assert_eq!(words[0], "/usr/local/bin/eddy");
    assert!(
        words.contains(&"${STATE_DIRECTORY}"),
        "history in the state directory"
    );
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("\n*** SKIPPED: no systemd-analyze on this machine. ***\n");
        return;
    }
    let dir = scratch("verify");
    let verify = |text: &str| {
        let path = dir.join("eddy.service");
        std::fs::write(&path, text).unwrap();
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap()
    };
    let program = PathBuf::from(env!("CARGO_BIN_EXE_eddy"));
    let output = verify(&unit_running(&program));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
    // The check can fail: a misspelt key is reported.
    let output = verify(&unit_running(&program).replace("NoNewPrivileges", "NoNewPrivilege"));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("Unknown key"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_units_command_line_serves_chat_metrics_and_stops_on_sigterm() {
    let state = scratch("run");
    let env = [
        // As a drop-in would set them: the test's own free ports.
        ("EDDY_ADDR", "127.0.0.1:0"),
        ("EDDY_METRICS_ADDR", "127.0.0.1:0"),
        ("EDDY_FLAGS", ""),
        ("STATE_DIRECTORY", state.to_str().unwrap()),
    ];
    let words = exec_start();
    let args: Vec<String> = words[1..].iter().flat_map(|w| expand(w, &env)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut binary = Binary::start_in(&args, Some(&state));
    let addr = binary.listening_addr();
    let metrics = binary.metrics_addr();
    assert_room_works(addr);
    assert_eq!(get(metrics, "/readyz").status, 200);
    assert!(
        state.join("rooms").is_dir(),
        "the history is in $STATE_DIRECTORY"
    );
    // systemctl stop: SIGTERM, then a graceful exit well within TimeoutStopSec.
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&state);
}
