//! The `weft` binary end to end: identities, the CA, errors, the bench.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::path::Path;
use std::process::{Command, Output};

fn weft(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(dir)
        .env_remove("WEFT_LOG")
        .env_remove("WEFT_LOG_FORMAT")
        .output()
        .unwrap()
}

fn ok_json(args: &[&str], dir: &Path) -> serde_json::Value {
    let out = weft(args, dir);
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A failure exits non-zero with exactly one line on stderr.
fn one_line_error(args: &[&str], dir: &Path) -> String {
    let out = weft(args, dir);
    assert!(!out.status.success(), "weft {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn id_new_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let made = ok_json(&["id", "new", "--out", "node.key", "--json"], dir.path());
    let shown = ok_json(&["id", "show", "node.key", "--json"], dir.path());
    assert_eq!(made["node_id"], shown["node_id"]);
    assert_eq!(shown["node_id"].as_str().unwrap().len(), 52);
    assert_eq!(shown["signature_algorithm"], "id-MLDSA65-Ed25519-SHA512");
    assert!(
        shown["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let err = one_line_error(&["id", "new", "--out", "node.key"], dir.path());
    assert!(err.contains("already exists"), "{err}");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("node.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = one_line_error(&["id", "show", "node.key"], dir.path());
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
    std::fs::set_permissions(
        dir.path().join("junk.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let err = one_line_error(&["id", "show", "junk.key"], dir.path());
    assert!(err.contains("not valid PEM"), "{err}");
}

#[test]
fn ca_init_issue_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(
        &[
            "ca",
            "init",
            "--trust-domain",
            "mesh.test",
            "--out",
            "ca",
            "--json",
        ],
        d,
    );
    let issued = ok_json(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://mesh.test/node/a",
            "--ttl",
            "10m",
            "--out",
            "a",
            "--json",
        ],
        d,
    );
    assert_eq!(issued["algorithm"], "ML-DSA-65");
    let compat = ok_json(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://mesh.test/prom",
            "--compat",
            "--out",
            "p",
            "--json",
        ],
        d,
    );
    assert_eq!(compat["algorithm"], "ECDSA-P256-SHA256");
    for f in ["a/svid.key", "p/svid.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let v = ok_json(&["ca", "verify", "--ca", "ca", "a/svid.pem", "--json"], d);
    assert_eq!(v["valid"], true);
    assert_eq!(v["spiffe_id"], "spiffe://mesh.test/node/a");
    assert_eq!(v["serial"], issued["serial"]);

    // Rejections name the reason.
    let serial = issued["serial"].as_str().unwrap();
    let err = one_line_error(
        &[
            "ca",
            "verify",
            "--ca",
            "ca",
            "a/svid.pem",
            "--revoked",
            serial,
        ],
        d,
    );
    assert!(err.contains("revoked"), "{err}");
    let err = one_line_error(&["ca", "verify", "--ca", "ca", "ca/ca.pem"], d);
    assert!(err.contains("cA=false"), "{err}");
    ok_json(
        &[
            "ca",
            "init",
            "--trust-domain",
            "other.test",
            "--out",
            "other",
            "--json",
        ],
        d,
    );
    let err = one_line_error(&["ca", "verify", "--ca", "other", "a/svid.pem"], d);
    assert!(err.contains("trust domain"), "{err}");
    let err = one_line_error(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://mesh.test/a/",
            "--out",
            "x",
        ],
        d,
    );
    assert!(err.contains("must not end with '/'"), "{err}");
    let err = one_line_error(
        &["ca", "init", "--trust-domain", "mesh.test", "--out", "ca"],
        d,
    );
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn bench_crypto_json_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let r = ok_json(
        &[
            "bench",
            "crypto",
            "--json",
            "--rounds",
            "3",
            "--batch",
            "2",
            "--handshakes",
            "3",
        ],
        dir.path(),
    );
    for key in [
        "xwing_encaps_ns",
        "xwing_decaps_ns",
        "composite_sign_ns",
        "composite_verify_ns",
        "mldsa65_sign_ns",
        "mldsa65_verify_ns",
        "ed25519_sign_ns",
        "ed25519_verify_ns",
        "composite_sign_overhead_ratio",
        "composite_verify_overhead_ratio",
        "mtls_handshakes_per_sec",
    ] {
        let v = r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {r}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
}

#[test]
fn json_logs_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    ok_json(
        &["ca", "init", "--trust-domain", "t", "--out", "ca", "--json"],
        dir.path(),
    );
    let out = weft(
        &[
            "--log-format",
            "json",
            "--log-level",
            "info",
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://t/x",
            "--out",
            "x",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let line = String::from_utf8(out.stderr).unwrap();
    let log: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(log["fields"]["message"], "issued X.509-SVID");
    assert_eq!(log["fields"]["spiffe_id"], "spiffe://t/x");

    let out = weft(&["--help"], dir.path());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["id", "ca", "bench", "--log-format"] {
        assert!(help.contains(cmd), "{help}");
    }
    // A bad duration is a usage error (clap exits 2) naming the value.
    let out = weft(
        &[
            "ca",
            "init",
            "--trust-domain",
            "t",
            "--out",
            "c",
            "--ttl",
            "soon",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}

#[test]
fn bus_commands_against_a_temp_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("bus");
    let d = d.to_str().unwrap();
    let bus = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["bus".to_owned(), "--data-dir".to_owned(), d.to_owned()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ok_json(&a, dir.path())
    };
    let created = run(bus(&[
        "streams",
        "create",
        "jobs",
        "--subject",
        "jobs.>",
        "--json",
    ]));
    assert_eq!(created["dead_letter_stream"], "jobs_DLQ");
    let a = run(bus(&[
        "pub",
        "jobs.a",
        "one",
        "--id",
        "m1",
        "--header",
        "X-Tenant: blue",
        "--json",
    ]));
    assert_eq!(
        (a["stream"].as_str(), a["sequence"].as_u64()),
        (Some("jobs"), Some(1))
    );
    let dup = run(bus(&["pub", "jobs.a", "one again", "--id", "m1", "--json"]));
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["sequence"], 1);
    run(bus(&["pub", "jobs.b", "two", "--json"]));

    // Terminate the first into the dead-letter stream, ack the second.
    let got = run(bus(&[
        "sub",
        "jobs",
        "--max",
        "1",
        "--wait",
        "0s",
        "--settle",
        "term",
        "--reason",
        "bad input",
        "--json",
    ]));
    assert_eq!(got[0]["payload"], "one");
    assert_eq!(got[0]["headers"][0][1], "blue");
    let got = run(bus(&["sub", "jobs", "--wait", "0s", "--json"]));
    assert_eq!(got.as_array().unwrap().len(), 1);
    assert_eq!(got[0]["payload"], "two");
    let none = run(bus(&["sub", "jobs", "--wait", "0s", "--json"]));
    assert!(none.as_array().unwrap().is_empty());

    let list = run(bus(&["dlq", "list", "jobs", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0]["reason"].as_str().unwrap().contains("bad input"));
    let seq = list[0]["dlq_sequence"].as_u64().unwrap().to_string();
    let shown = run(bus(&["dlq", "show", "jobs", &seq, "--json"]));
    assert_eq!(shown["original_msg_id"], "m1");
    assert_eq!(shown["payload"], "one");
    let replayed = run(bus(&["dlq", "replay", "jobs", &seq, "--json"]));
    assert_eq!(replayed["stream"], "jobs");
    assert!(replayed["sequence"].as_u64().unwrap() > 2);
    assert!(
        run(bus(&["dlq", "list", "jobs", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    let back = run(bus(&["sub", "jobs", "--wait", "0s", "--json"]));
    assert_eq!(back[0]["payload"], "one");
    assert_eq!(back[0]["delivered"], 1);

    let streams = run(bus(&["streams", "list", "--json"]));
    let names: Vec<&str> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["config"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs", "jobs_DLQ"]);

    // Table output by default; errors are one line.
    let out = weft(
        &bus(&["streams", "list"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        dir.path(),
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("stream "), "{table}");
    assert!(table.contains("jobs_DLQ"), "{table}");
    let args = bus(&["pub", "nostream.x", "x"]);
    let err = one_line_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    assert!(err.contains("no stream captures"), "{err}");
}
