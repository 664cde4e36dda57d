//! Agents across real hosts: six network namespaces joined by veth pairs
//! in two disjoint three-hop paths, one `weft agent run` process per
//! namespace with its TUN interface, and a control plane in a seventh
//! namespace that every node reaches over its own management link.
//!
//! ```text
//!        n1 ---- n2
//!       /          \
//!     n0            n3          ctl -- every node (10.232.i.0/24)
//!       \          /
//!        n4 ---- n5
//! ```
//!
//! Every agent enrolls with `weft agent enroll` and a join token, and its
//! `weft agent run` fetches the network file, sends heartbeats and follows
//! revocations. Shows: `ping -6` from n0 to n3's mesh address over three hops; SIGKILL
//! of the relay in use and traffic resuming on the other path (lost
//! pings bounded, detection and reroute seen in /metrics); an agent with
//! an SVID from another trust domain refused; the killed relay restarted
//! from its data directory and linked again; garbage and repeated UDP payloads at an agent's port causing
//! no crash and no accepted link; a network policy denying n0 -> n3 put
//! in force by the agents (pings dropped and counted) and lifted again; a
//! node revoked at the control plane cut off by its neighbours; the control plane stopped, the mesh still
//! carrying traffic and `weft status` saying so. Needs root (namespaces, TUN) and `ip`
//! and `ping`; skips with a message otherwise. Namespaces are deleted
//! even when the test fails.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_agent::network::{NETWORK_FILE, Network};
use weft_agent::tun::mesh_address;
use weft_crypto::ca::{CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::{NodeId, NodeIdentity, TrustDomain};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const NODES: usize = 6;
const EDGES: [(usize, usize); 6] = [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 3)];
const PORT: u16 = 7946;
const CONTROL_PORT: u16 = 8443;

fn can_run() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    for tool in ["ip", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    Ok(())
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and agent processes, torn down on drop (also on panic).
struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    /// Agents, in the order started (index = what `start` returned).
    children: Vec<Option<Child>>,
    control: Option<Child>,
}

impl Lab {
    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn addr(edge: usize, end: usize) -> String {
        format!("10.231.{edge}.{}", end + 1)
    }

    /// The control plane's namespace.
    fn ctl(&self) -> String {
        format!("{}-c", self.prefix)
    }

    /// The control plane's URL as node `i` reaches it.
    fn control_url(i: usize) -> String {
        format!("https://10.232.{i}.1:{CONTROL_PORT}")
    }

    fn new() -> Lab {
        let tag = std::process::id() % 100_000;
        let lab = Lab {
            prefix: format!("weftt{tag}"),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
            control: None,
        };
        for i in 0..NODES {
            sh(&["ip", "netns", "add", &lab.ns(i)]);
            sh(&["ip", "-n", &lab.ns(i), "link", "set", "lo", "up"]);
        }
        sh(&["ip", "netns", "add", &lab.ctl()]);
        sh(&["ip", "-n", &lab.ctl(), "link", "set", "lo", "up"]);
        // Management links: the control plane's namespace to every node.
        for i in 0..NODES {
            let (vc, vn) = (format!("wm{tag}c{i}"), format!("wm{tag}n{i}"));
            sh(&[
                "ip", "link", "add", &vc, "type", "veth", "peer", "name", &vn,
            ]);
            for (v, ns, host) in [(&vc, lab.ctl(), 1), (&vn, lab.ns(i), 2)] {
                sh(&["ip", "link", "set", v, "netns", &ns]);
                let cidr = format!("10.232.{i}.{host}/24");
                sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", v]);
                sh(&["ip", "-n", &ns, "link", "set", v, "up"]);
            }
        }
        for (e, &(a, b)) in EDGES.iter().enumerate() {
            let (va, vb) = (format!("wv{tag}a{e}"), format!("wv{tag}b{e}"));
            sh(&[
                "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
            ]);
            for (v, n, end) in [(&va, a, 0), (&vb, b, 1)] {
                sh(&["ip", "link", "set", v, "netns", &lab.ns(n)]);
                let cidr = format!("{}/24", Lab::addr(e, end));
                sh(&["ip", "-n", &lab.ns(n), "addr", "add", &cidr, "dev", v]);
                sh(&["ip", "-n", &lab.ns(n), "link", "set", v, "up"]);
            }
        }
        lab
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `weft ARGS` in namespace `ns` and returns its standard output;
    /// fails the test if it fails.
    fn weft(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, WEFT])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weft {args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `weft control up` in the control namespace and waits until
    /// it answers.
    fn start_control(&mut self) {
        let dir = self.node_dir("control");
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("control.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ctl(), WEFT, "control", "up"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("0.0.0.0:{CONTROL_PORT}")])
            .args(["--trust-domain", "lab.weft.test"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.control = Some(child);
        let token = dir.join("admin.token");
        wait_for(Duration::from_secs(30), "the control plane starts", || {
            token.exists() && Lab::control_ok(&self.ctl(), &dir)
        });
    }

    fn kill_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the control plane answers an authenticated request.
    fn control_ok(ctl: &str, dir: &Path) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ctl, WEFT, "node", "list", "--json"])
            .args(Lab::operator(dir))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The operator's client arguments, inside the control namespace.
    fn operator(dir: &Path) -> Vec<String> {
        vec![
            "--control".into(),
            format!("https://127.0.0.1:{CONTROL_PORT}"),
            "--api-token-file".into(),
            dir.join("admin.token").display().to_string(),
            "--ca-bundle".into(),
            dir.join("ca").join("bundle.pem").display().to_string(),
        ]
    }

    /// Runs an operator command against the control plane.
    fn operate(&self, args: &[&str]) -> String {
        let dir = self.node_dir("control");
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(Lab::operator(&dir));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Lab::weft(&self.ctl(), &refs)
    }

    /// Starts `weft agent run` for `dir` in namespace `ns`.
    fn start(&mut self, ns: &str, dir: &Path) -> usize {
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                WEFT,
                "--log-level",
                "info",
                "agent",
                "run",
            ])
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(Some(child));
        self.children.len() - 1
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self, i: usize) -> bool {
        self.children[i]
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.node_dir(name).join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        self.kill_control();
        for ns in (0..NODES).map(|i| self.ns(i)).chain([self.ctl()]) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Writes `dir/agent.toml`: links on `port`, dialing `peers`.
fn write_config(dir: &Path, peers: &[String], port: u16, tun: bool, metrics_port: u16) {
    let peers = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "data_dir = \"{d}\"\nlisten = \"0.0.0.0:{port}\"\npeers = [{peers}]\ntun = {tun}\nadmin_socket = \"{d}/agent.sock\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n",
        d = dir.display()
    );
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
}

/// Writes the data directory of a node not enrolled anywhere (its own CA
/// and network file) and its agent.toml.
fn write_unenrolled_node(
    dir: &Path,
    identity: &NodeIdentity,
    ca: &CertificateAuthority,
    network: &Network,
    peers: &[String],
    port: u16,
    metrics_port: u16,
) {
    std::fs::create_dir_all(dir).unwrap();
    identity.save(&dir.join("node.key"), false).unwrap();
    let svid = ca
        .issue(
            &identity.node_id().spiffe_id(ca.trust_domain()),
            SvidAlgorithm::MlDsa65,
            Validity::starting_now(Duration::from_secs(3600)).unwrap(),
        )
        .unwrap();
    svid.save(dir, &ca.bundle_pem()).unwrap();
    std::fs::write(dir.join(NETWORK_FILE), network.to_json()).unwrap();
    write_config(dir, peers, port, false, metrics_port);
}

fn admin(dir: &Path, cmd: &str) -> Option<serde_json::Value> {
    let out = Command::new(WEFT)
        .arg(cmd)
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--json")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn next_hop(dir: &Path, dst: &NodeId) -> Option<String> {
    let routes = admin(dir, "routes")?;
    routes
        .as_array()?
        .iter()
        .find(|r| r["dst"] == dst.to_string())
        .and_then(|r| r["next_hop"].as_str().map(str::to_string))
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within {within:?}: {what}");
}

/// The agent's /metrics text in namespace `ns`.
fn metrics(ns: &str) -> String {
    let script =
        "exec 3<>/dev/tcp/127.0.0.1/9464; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pings `dst` from namespace `ns`: (sent, received).
fn ping(ns: &str, dst: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-6", "-n", "-q", "-W", "1", "-i", interval, "-c",
        ])
        .arg(count.to_string())
        .arg(dst)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "N packets transmitted, M received, ..."
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| {
            let show = |what: &str| {
                let o = Command::new("ip")
                    .args(["-n", ns, "-6", what, "show"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            panic!(
                "no ping summary in {text:?} (stderr {:?}); addresses in {ns}:\n{}\nroutes:\n{}",
                String::from_utf8_lossy(&out.stderr),
                show("addr"),
                show("route")
            )
        });
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn agents_in_six_namespaces_route_reroute_and_refuse() {
    if let Err(why) = can_run() {
        eprintln!("SKIPPED agents_in_six_namespaces_route_reroute_and_refuse: {why}");
        return;
    }
    let mut lab = Lab::new();
    lab.start_control();
    let token = lab.operate(&[
        "join-token",
        "create",
        "--uses",
        "6",
        "--auto-approve",
        "--json",
    ]);
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let bundle = lab.node_dir("control").join("ca").join("bundle.pem");
    // Enroll in order, so that n0..n5 are the roster's first six nodes.
    let mut ids = Vec::new();
    for n in 0..NODES {
        let dir = lab.node_dir(&format!("n{n}"));
        let url = Lab::control_url(n);
        Lab::weft(
            &lab.ns(n),
            &[
                "agent",
                "enroll",
                "--control",
                &url,
                "--token",
                &token,
                "--ca-bundle",
                bundle.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
            ],
        );
        ids.push(NodeIdentity::load(&dir.join("node.key")).unwrap());
        // The lower-numbered end of each edge dials the other.
        let peers: Vec<String> = EDGES
            .iter()
            .enumerate()
            .filter(|(_, (a, _))| *a == n)
            .map(|(e, _)| format!("{}:{PORT}", Lab::addr(e, 1)))
            .collect();
        write_config(&dir, &peers, PORT, true, 9464);
    }
    for n in 0..NODES {
        let (ns, dir) = (lab.ns(n), lab.node_dir(&format!("n{n}")));
        lab.start(&ns, &dir);
    }
    let (d0, d3) = (lab.node_dir("n0"), lab.node_dir("n3"));
    let far = ids[3].node_id();
    let far_addr = mesh_address(&far).to_string();
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(20), "n0 has a route to n3", || {
            next_hop(&d0, &far).is_some()
        })
    }));
    if converged.is_err() {
        panic!(
            "no route; n0's log:\n{}\nn3's log:\n{}",
            lab.log("n0"),
            lab.log("n3")
        );
    }

    // Three hops: n0 reaches n3 through n1 or n4.
    let relay = next_hop(&d0, &far).unwrap();
    let relay_index = ids
        .iter()
        .position(|i| i.node_id().to_string() == relay)
        .unwrap();
    assert!([1, 4].contains(&relay_index), "next hop {relay_index}");
    let (sent, got) = ping(&lab.ns(0), &far_addr, 5, "0.2");
    assert!(got >= 4, "ping over three hops: {got}/{sent} answered");

    // Kill the relay in use; pings resume on the other path.
    lab.kill(relay_index);
    let (sent, got) = ping(&lab.ns(0), &far_addr, 40, "0.1");
    let lost = sent - got;
    if lost > 20 {
        panic!(
            "{lost} of {sent} pings lost after killing the relay (bound 20, i.e. 2 s)\nn0 routes: {:?}\nn0 peers: {:?}\nn0 log:\n{}\nn3 log:\n{}",
            admin(&d0, "routes"),
            admin(&d0, "peers"),
            lab.log("n0"),
            lab.log("n3")
        );
    }
    let other = next_hop(&d0, &far).unwrap();
    assert_ne!(other, relay, "still routed through the killed relay");
    eprintln!("relay killed: {lost}/{sent} pings lost");
    // n0's metrics saw the death and the reroute.
    let text = metrics(&lab.ns(0));
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from n0's metrics:\n{text}"))
    };
    assert!(value("weft_agent_neighbours_dead_total") >= 1.0);
    assert!(value("weft_agent_detection_seconds_count") >= 1.0);
    // Reroute times are exported; whether one is recorded depends on
    // timing: the route often leaves the dying relay on its rising
    // loss-based cost before the death is declared, and the histogram
    // counts only moves after the death.
    let _ = value("weft_agent_reroute_seconds_count");
    eprintln!(
        "n0: detection {:.0} ms, reroute {:.1} ms after it (means)",
        1000.0 * value("weft_agent_detection_seconds_sum")
            / value("weft_agent_detection_seconds_count"),
        1000.0 * value("weft_agent_reroute_seconds_sum")
            / value("weft_agent_reroute_seconds_count"),
    );

    // An agent with an SVID from another trust domain, in n5's namespace,
    // dialing n3: refused and counted.
    let foreign_td = TrustDomain::new("elsewhere.weft.test").unwrap();
    let foreign_ca = CertificateAuthority::init(&foreign_td, Duration::from_secs(3600)).unwrap();
    let stranger = NodeIdentity::generate().unwrap();
    let foreign_net = Network {
        trust_domain: foreign_td,
        authority: NodeIdentity::generate().unwrap().public().signing,
        nodes: vec![stranger.public(), ids[3].public()],
        tags: Default::default(),
    };
    let dx = lab.node_dir("foreign");
    write_unenrolled_node(
        &dx,
        &stranger,
        &foreign_ca,
        &foreign_net,
        &[format!("{}:{PORT}", Lab::addr(5, 1))],
        7947,
        9465,
    );
    let foreign = lab.start(&lab.ns(5), &dx);
    wait_for(
        Duration::from_secs(10),
        "n3 refuses the foreign agent",
        || admin(&d3, "status").is_some_and(|s| s["refusals"]["handshake"].as_u64() >= Some(1)),
    );
    let peers_of_n3 = admin(&d3, "peers").unwrap();
    assert!(
        peers_of_n3
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != stranger.node_id().to_string()),
        "the foreign agent got a link: {peers_of_n3}"
    );
    lab.kill(foreign);

    // The killed relay restarts from its data directory: same identity, a
    // raised boot epoch, and n0 links to it again.
    let relay_dir = lab.node_dir(&format!("n{relay_index}"));
    lab.start(&lab.ns(relay_index), &relay_dir);
    wait_for(
        Duration::from_secs(20),
        "n0 links to the restarted relay",
        || {
            admin(&d0, "peers").is_some_and(|p| {
                p.as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["id"] == relay && p["health"] == "up")
            })
        },
    );
    let state = std::fs::read_to_string(relay_dir.join("state.json")).unwrap();
    assert!(
        state.contains("\"epoch\":2"),
        "state after restart: {state}"
    );

    // Garbage and repeated UDP payloads at n3's port from n2's namespace.
    let target = Lab::addr(2, 1);
    let script = format!(
        "for i in $(seq 1 200); do head -c $((RANDOM % 1400 + 1)) /dev/urandom > /dev/udp/{target}/{PORT}; done; \
         head -c 1200 /dev/urandom > /tmp/weft-replay.$$; \
         for i in $(seq 1 50); do cat /tmp/weft-replay.$$ > /dev/udp/{target}/{PORT}; done; rm -f /tmp/weft-replay.$$"
    );
    sh(&["ip", "netns", "exec", &lab.ns(2), "bash", "-c", &script]);
    let n3 = 3;
    assert!(lab.alive(n3), "n3 died after garbage:\n{}", lab.log("n3"));
    let (sent, got) = ping(&lab.ns(0), &far_addr, 5, "0.2");
    assert!(got >= 4, "after garbage: {got}/{sent} answered");
    let peers_of_n3 = admin(&d3, "peers").unwrap();
    assert!(
        peers_of_n3.as_array().unwrap().len() <= 2,
        "garbage made links: {peers_of_n3}"
    );

    // The agents follow the control plane: it has their heartbeats, and
    // `weft status` says they are connected to it.
    let status = admin(&d0, "status").unwrap();
    assert!(
        status["control_plane"]
            .as_str()
            .unwrap_or("")
            .starts_with("connected to"),
        "n0's status: {status}"
    );
    let nodes: serde_json::Value =
        serde_json::from_str(&lab.operate(&["node", "list", "--json"])).unwrap();
    assert_eq!(
        nodes["items"].as_array().map(Vec::len),
        Some(NODES),
        "{nodes}"
    );

    // A network policy that denies n0 -> n3 (any protocol) is put in force
    // by the agents at their next sync; n3's own check drops what n0
    // sends. A later version that allows everything lets pings through.
    let policy_dir = lab.node_dir("control");
    let deny = policy_dir.join("deny.json");
    std::fs::write(
        &deny,
        format!(
            r#"{{"default": "allow", "rules": [{{"from": ["node:{}"], "to": ["node:{}"], "ports": ["*"], "protocol": "any", "action": "deny"}}]}}"#,
            ids[0].node_id(),
            far
        ),
    )
    .unwrap();
    lab.operate(&["policy", "set", deny.to_str().unwrap()]);
    wait_for(
        Duration::from_secs(30),
        "n0 and n3 enforce policy 1",
        || {
            [&d0, &d3]
                .iter()
                .all(|d| admin(d, "status").is_some_and(|s| s["policy_version"] == 1))
        },
    );
    let (sent, got) = ping(&lab.ns(0), &far_addr, 3, "0.2");
    assert_eq!(
        got, 0,
        "policy 1 denies n0 -> n3, yet {got}/{sent} answered"
    );
    let dropped = admin(&d0, "status").unwrap()["tun"]["dropped_policy"].clone();
    assert!(
        dropped.as_u64() >= Some(3),
        "n0 dropped {dropped} by policy"
    );
    let allow = policy_dir.join("allow.json");
    std::fs::write(&allow, r#"{"default": "allow", "rules": []}"#).unwrap();
    lab.operate(&[
        "policy",
        "set",
        allow.to_str().unwrap(),
        "--base-version",
        "1",
    ]);
    wait_for(
        Duration::from_secs(30),
        "n0 and n3 enforce policy 2",
        || {
            [&d0, &d3]
                .iter()
                .all(|d| admin(d, "status").is_some_and(|s| s["policy_version"] == 2))
        },
    );
    let (sent, got) = ping(&lab.ns(0), &far_addr, 5, "0.2");
    assert!(got >= 4, "policy 2 allows: {got}/{sent} answered");

    // Revoke n5 at the control plane: its neighbours (n4, n3) close their
    // links to it and nobody keeps a route to it.
    let victim = ids[5].node_id();
    lab.operate(&[
        "node",
        "revoke",
        &victim.to_string(),
        "--reason",
        "netns test",
    ]);
    let (d4, victim_text) = (lab.node_dir("n4"), victim.to_string());
    let linked_to_victim = |dir: &Path| {
        admin(dir, "peers")
            .is_none_or(|p| p.as_array().unwrap().iter().any(|p| p["id"] == victim_text))
    };
    wait_for(
        Duration::from_secs(40),
        "n3 and n4 cut off the revoked n5",
        || !linked_to_victim(&d3) && !linked_to_victim(&d4),
    );
    wait_for(Duration::from_secs(20), "n0 loses its route to n5", || {
        next_hop(&d0, &victim).is_none()
    });
    let (sent, got) = ping(&lab.ns(0), &far_addr, 5, "0.2");
    assert!(got >= 4, "after the revocation: {got}/{sent} answered");

    // The control plane goes away: the mesh keeps carrying traffic on
    // cached state, and `weft status` says so.
    lab.kill_control();
    wait_for(
        Duration::from_secs(40),
        "n0's status says the control plane is unreachable",
        || {
            admin(&d0, "status").is_some_and(|s| {
                s["control_plane"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("UNREACHABLE")
            })
        },
    );
    let (sent, got) = ping(&lab.ns(0), &far_addr, 5, "0.2");
    assert!(got >= 4, "without the control plane: {got}/{sent} answered");
}
