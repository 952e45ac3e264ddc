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

/// The words of the unit's `key` line (`ExecStart`), the program first.
fn command(key: &str) -> Vec<&'static str> {
    let line = UNIT
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("a {key} line"));
    line.split_whitespace().collect()
}

/// The unit's `ExecStart` words, the program first.
fn exec_start() -> Vec<&'static str> {
    command("ExecStart")
}

/// Runs the unit's `ExecReload` as systemd would for `binary`
/// (`$MAINPID` its pid).
fn reload(binary: &Binary) {
    let pid = binary.pid.to_string();
    let words: Vec<String> = command("ExecReload")
        .iter()
        .flat_map(|w| expand(w, &[("MAINPID", pid.as_str())]))
        .collect();
    let status = Command::new(&words[0]).args(&words[1..]).status().unwrap();
    assert!(status.success(), "{words:?}");
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
    // systemctl reload: SIGHUP, which without TLS has nothing to load.
    reload(&binary);
    binary.wait_for_line("SIGHUP: nothing to reload (no --tls-cert)");
    assert_room_works(addr);
    // systemctl stop: SIGTERM, then a graceful exit well within TimeoutStopSec.
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&state);
}

/// With TLS in `EDDY_FLAGS`, as the README's drop-in has it: the unit's
/// command line serves `wss://`, and `systemctl reload` gives new
/// connections the renewed certificate.
#[cfg(feature = "tls")]
#[test]
fn the_units_command_line_serves_tls_and_reload_renews_the_certificate() {
    use common::pki::{Pki, tls_connect, wss_join};
    let mut pki = Pki::new("service");
    let state = scratch("tls");
    let flags = pki.flags().join(" ");
    let env = [
        ("EDDY_ADDR", "127.0.0.1:0"),
        ("EDDY_METRICS_ADDR", "127.0.0.1:0"),
        ("EDDY_FLAGS", flags.as_str()),
        ("STATE_DIRECTORY", state.to_str().unwrap()),
    ];
    let args: Vec<String> = exec_start()[1..]
        .iter()
        .flat_map(|w| expand(w, &env))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut binary = Binary::start_in(&args, Some(&state));
    let addr = binary.listening_addr();
    let client = pki.client();
    let (_chatting, _) = wss_join(addr, &client);
    pki.issue();
    reload(&binary);
    binary.wait_for_line("SIGHUP: TLS certificate and key loaded again");
    let stream = tls_connect(addr, &client);
    let presented = stream.conn.peer_certificates().expect("a certificate")[0].to_vec();
    assert_eq!(presented, pki.issued.to_vec(), "the renewed certificate");
    binary.signal(libc::SIGTERM);
    assert_eq!(binary.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&state);
}
