//! `weft control up` and the commands that talk to it, as an operator
//! runs them: a real control plane process on 127.0.0.1, enrollment of an
//! agent, node listing and revocation, the audit trail, roles, and a clean
//! exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Control {
    child: Child,
    url: String,
    fingerprint: String,
    token: String,
}

impl Drop for Control {
    fn drop(&mut self) {
        // A failed test must not leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Control {
    let mut child = Command::new(WEFT)
        .args([
            "control",
            "up",
            "--listen",
            "127.0.0.1:0",
            "--allow-classical-kex",
        ])
        .arg("--data-dir")
        .arg(dir.join("control"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let (mut url, mut fingerprint, mut token) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while token.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("weft control up printed its token in time");
        if let Some(u) = line.strip_prefix("weft control plane listening on ") {
            url = Some(u.to_owned());
        } else if let Some(f) = line.trim().strip_prefix("CA fingerprint: ") {
            fingerprint = Some(f.trim().to_owned());
        } else if line.trim().starts_with("weft_api_") {
            token = Some(line.trim().to_owned());
        }
    }
    Control {
        child,
        url: url.unwrap(),
        fingerprint: fingerprint.unwrap(),
        token: token.unwrap(),
    }
}

fn weft(c: &Control, token: &str, args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(args)
        .env("WEFT_CONTROL", &c.url)
        .env("WEFT_CA_FINGERPRINT", &c.fingerprint)
        .env("WEFT_API_TOKEN", token)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_operator_enrolls_lists_revokes_and_stops_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let admin = c.token.clone();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("control/admin.token"))
            .unwrap()
            .trim(),
        admin
    );

    let made = ok_json(weft(
        &c,
        &admin,
        &[
            "join-token",
            "create",
            "--auto-approve",
            "--tag",
            "role=db",
            "--json",
        ],
    ));
    let token = made["token"].as_str().unwrap();
    let agent_dir = dir.path().join("agent");
    let enrolled = ok_json(weft(
        &c,
        &admin,
        &[
            "agent",
            "enroll",
            "--token",
            token,
            "--data-dir",
            agent_dir.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(enrolled["status"], "approved");
    let node_id = enrolled["settings"]["node_id"].as_str().unwrap().to_owned();
    for f in ["node.key", "svid.key", "svid.pem", "bundle.pem"] {
        assert!(agent_dir.join(f).exists(), "{f}");
    }

    let nodes = ok_json(weft(&c, &admin, &["node", "list", "--json"]));
    assert_eq!(nodes["items"][0]["node_id"], node_id.as_str());
    assert_eq!(nodes["items"][0]["tags"][0], "role=db");
    let table = weft(&c, &admin, &["node", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&node_id));

    // A viewer may read but not revoke.
    let viewer = ok_json(weft(
        &c,
        &admin,
        &[
            "api-token",
            "create",
            "--name",
            "ro",
            "--role",
            "viewer",
            "--json",
        ],
    ));
    let viewer = viewer["token"].as_str().unwrap();
    ok_json(weft(&c, viewer, &["node", "show", &node_id, "--json"]));
    let denied = weft(&c, viewer, &["node", "revoke", &node_id]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));

    let revoked = ok_json(weft(
        &c,
        &admin,
        &[
            "node",
            "revoke",
            &node_id,
            "--reason",
            "lost laptop",
            "--json",
        ],
    ));
    assert_eq!(revoked["epoch"], 1);
    let renew = weft(
        &c,
        &admin,
        &["agent", "renew", "--data-dir", agent_dir.to_str().unwrap()],
    );
    assert!(!renew.status.success());
    assert!(String::from_utf8_lossy(&renew.stderr).contains("revoked"));

    let audit = ok_json(weft(
        &c,
        &admin,
        &["audit", "list", "--action", "node.revoke", "--json"],
    ));
    let results: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["success", "denied"]);

    // A policy, then the topology.
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":"deny","rules":[{"from":["tag:role=web"],"to":["tag:role=db"],"ports":["5432"],"protocol":"tcp","action":"allow"}]}"#,
    )
    .unwrap();
    let stored = ok_json(weft(
        &c,
        &admin,
        &[
            "policy",
            "set",
            policy.to_str().unwrap(),
            "--base-version",
            "0",
            "--json",
        ],
    ));
    assert_eq!(stored["version"], 1);
    let shown = ok_json(weft(&c, viewer, &["policy", "show", "--json"]));
    assert_eq!(shown["document"]["rules"][0]["ports"][0], "5432");
    let topology = ok_json(weft(&c, viewer, &["topology", "--json"]));
    assert_eq!(topology["nodes"][0]["node_id"], node_id.as_str());
    let dot = weft(&c, viewer, &["topology", "--dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph weft {"));

    // Without a trust anchor the CLI refuses to guess.
    let out = Command::new(WEFT)
        .args(["node", "list", "--control", &c.url])
        .env_remove("WEFT_CA_FINGERPRINT")
        .env_remove("WEFT_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-fingerprint"));

    // SIGTERM: a clean exit.
    let mut c = c;
    let child = &mut c.child;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "weft control up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_control_plane_command_has_help() {
    for args in [
        &["control", "up"][..],
        &["node", "list"],
        &["node", "show"],
        &["node", "approve"],
        &["node", "revoke"],
        &["audit", "list"],
        &["join-token", "create"],
        &["join-token", "list"],
        &["api-token", "create"],
        &["api-token", "list"],
        &["api-token", "revoke"],
        &["topology"],
        &["policy", "set"],
        &["policy", "show"],
        &["policy", "list"],
        &["agent", "enroll"],
        &["agent", "claim"],
        &["agent", "renew"],
    ] {
        let out = Command::new(WEFT)
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weft {} --help: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
