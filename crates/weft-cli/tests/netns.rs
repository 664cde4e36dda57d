//! Agents across real hosts: six network namespaces joined by veth pairs
//! in two disjoint three-hop paths, one `weft agent run` process per
//! namespace with its TUN interface.
//!
//! ```text
//!        n1 ---- n2
//!       /          \
//!     n0            n3
//!       \          /
//!        n4 ---- n5
//! ```
//!
//! Shows: `ping -6` from n0 to n3's mesh address over three hops; SIGKILL
//! of the relay in use and traffic resuming on the other path (lost
//! pings bounded, detection and reroute seen in /metrics); an agent with
//! an SVID from another trust domain refused; the killed relay restarted
//! from its data directory and linked again; garbage and repeated UDP payloads at an agent's port causing
//! no crash and no accepted link. Needs root (namespaces, TUN) and `ip`
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
    children: Vec<Option<Child>>,
}

impl Lab {
    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn addr(edge: usize, end: usize) -> String {
        format!("10.231.{edge}.{}", end + 1)
    }

    fn new() -> Lab {
        let tag = std::process::id() % 100_000;
        let lab = Lab {
            prefix: format!("weftt{tag}"),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        };
        for i in 0..NODES {
            sh(&["ip", "netns", "add", &lab.ns(i)]);
            sh(&["ip", "-n", &lab.ns(i), "link", "set", "lo", "up"]);
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
        for i in 0..NODES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
    }
}

/// Writes an enrolled node's data directory: identity, SVID, bundle,
/// network file and agent.toml.
fn write_node(
    dir: &Path,
    identity: &NodeIdentity,
    ca: &CertificateAuthority,
    network: &Network,
    peers: &[String],
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
    let peers = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "data_dir = \"{d}\"\nlisten = \"0.0.0.0:{PORT}\"\npeers = [{peers}]\ntun = true\nadmin_socket = \"{d}/agent.sock\"\nmetrics_listen = \"127.0.0.1:9464\"\n",
        d = dir.display()
    );
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
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
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
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
    let td = TrustDomain::new("lab.weft.test").unwrap();
    let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).unwrap();
    let ids: Vec<NodeIdentity> = (0..NODES)
        .map(|_| NodeIdentity::generate().unwrap())
        .collect();
    let network = Network {
        trust_domain: td.clone(),
        authority: NodeIdentity::generate().unwrap().public().signing,
        nodes: ids.iter().map(|i| i.public()).collect(),
    };
    // The lower-numbered end of each edge dials the other.
    for (n, id) in ids.iter().enumerate() {
        let peers: Vec<String> = EDGES
            .iter()
            .enumerate()
            .filter(|(_, (a, _))| *a == n)
            .map(|(e, _)| format!("{}:{PORT}", Lab::addr(e, 1)))
            .collect();
        write_node(&lab.node_dir(&format!("n{n}")), id, &ca, &network, &peers);
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
    assert!(
        lost <= 20,
        "{lost} of {sent} pings lost after killing the relay (bound 20, i.e. 2 s)"
    );
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
    assert!(value("weft_agent_reroute_seconds_count") >= 1.0);
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
        authority: network.authority.clone(),
        nodes: vec![stranger.public(), ids[3].public()],
    };
    let dx = lab.node_dir("foreign");
    write_node(
        &dx,
        &stranger,
        &foreign_ca,
        &foreign_net,
        &[format!("{}:{PORT}", Lab::addr(5, 1))],
    );
    let toml = std::fs::read_to_string(dx.join("agent.toml"))
        .unwrap()
        .replace(&format!("0.0.0.0:{PORT}"), "0.0.0.0:7947")
        .replace("tun = true", "tun = false")
        .replace("127.0.0.1:9464", "127.0.0.1:9465");
    std::fs::write(dx.join("agent.toml"), toml).unwrap();
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
}
