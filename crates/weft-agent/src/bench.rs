//! `weft bench dataplane`: the data plane measured against plain UDP on
//! the same path in the same run.
//!
//! - `mesh_gbps`: one UDP flow (iperf3, 1200-byte datagrams, sent as fast
//!   as possible) from namespace A to B's mesh address: A's TUN, A's agent
//!   (seal end to end, QUIC), a veth pair, B's agent, B's TUN. Received
//!   goodput.
//! - `plain_udp_gbps`: the same flow to B's veth address, no agents in the
//!   path. `ratio_vs_plain_udp` is the quotient.
//! - `handshakes_per_sec`: complete QUIC link handshakes (TLS 1.3,
//!   X25519MLKEM768, ML-DSA-65 SVIDs both ways, certificate checks)
//!   between two endpoints on loopback, 8 at a time.
//! - `e2e_handshakes_per_sec`: end-to-end session handshakes (two X-Wing
//!   encapsulations and decapsulations), one core.
//! - `e2e_seal_open_ns`: sealing and opening one 1400-byte payload.
//!
//! Needs root, `ip` and `iperf3` (Debian: `apt-get install iperf3`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use weft_crypto::ca::{CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::kem::DecapsulationKey;
use weft_crypto::svid::{RevokedSerials, SvidVerifier};
use weft_crypto::tls::{SpiffePeerVerifier, SvidCredentials};
use weft_crypto::{NodeId, NodeIdentity, TrustDomain};
use weft_proto::time::Time;

use crate::e2e::{E2e, E2eConfig};
use crate::network::{NETWORK_FILE, Network};
use crate::tun::mesh_address;

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

fn fail(what: impl std::fmt::Display) -> BenchError {
    BenchError(what.to_string())
}

/// Results of `weft bench dataplane`.
#[derive(Debug, Clone, Serialize)]
pub struct DataplaneReport {
    /// Mesh goodput, Gbit/s.
    pub mesh_gbps: f64,
    /// Plain UDP goodput on the same path, Gbit/s.
    pub plain_udp_gbps: f64,
    /// `mesh_gbps / plain_udp_gbps`.
    pub ratio_vs_plain_udp: f64,
    /// Datagrams lost in the mesh flow, percent (sent as fast as possible).
    pub mesh_lost_percent: f64,
    /// QUIC link handshakes per second.
    pub handshakes_per_sec: f64,
    /// End-to-end session handshakes per second.
    pub e2e_handshakes_per_sec: f64,
    /// Seal plus open of one 1400-byte payload, nanoseconds.
    pub e2e_seal_open_ns: f64,
    /// Seconds each flow ran.
    pub flow_seconds: u32,
    /// Datagram size of the flows.
    pub datagram_bytes: usize,
}

/// Datagram payload of the flows: fits the TUN's 1280-byte MTU.
const DATAGRAM: usize = 1200;

/// Runs the whole suite; `weft` is the binary that runs the agents.
pub fn dataplane(weft: &Path, seconds: u32) -> Result<DataplaneReport, BenchError> {
    let (seal_open_ns, e2e_hs) = e2e_micro()?;
    let handshakes = handshake_rate()?;
    let (mesh, lost, plain) = flows(weft, seconds)?;
    Ok(DataplaneReport {
        mesh_gbps: mesh,
        plain_udp_gbps: plain,
        ratio_vs_plain_udp: if plain > 0.0 { mesh / plain } else { 0.0 },
        mesh_lost_percent: lost,
        handshakes_per_sec: handshakes,
        e2e_handshakes_per_sec: e2e_hs,
        e2e_seal_open_ns: seal_open_ns,
        flow_seconds: seconds,
        datagram_bytes: DATAGRAM,
    })
}

fn e2e_pair() -> Result<(E2e, E2e), BenchError> {
    let (ka, kb) = (
        DecapsulationKey::generate().map_err(fail)?,
        DecapsulationKey::generate().map_err(fail)?,
    );
    let (ida, idb) = (NodeId([1; 32]), NodeId([2; 32]));
    let (eka, ekb) = (ka.encapsulation_key(), kb.encapsulation_key());
    let mut a = E2e::new(ida, ka, E2eConfig::default());
    let mut b = E2e::new(idb, kb, E2eConfig::default());
    a.set_peer_key(idb, ekb);
    b.set_peer_key(ida, eka);
    Ok((a, b))
}

/// Delivers everything queued between `a` and `b`.
fn exchange(a: &mut E2e, b: &mut E2e, now: Time) -> Result<usize, BenchError> {
    let (ida, idb) = (NodeId([1; 32]), NodeId([2; 32]));
    let mut opened = 0;
    loop {
        let mut moved = false;
        while let Some((_, m)) = a.poll_transmit() {
            opened += usize::from(b.open(now, ida, &m).map_err(fail)?.is_some());
            moved = true;
        }
        while let Some((_, m)) = b.poll_transmit() {
            opened += usize::from(a.open(now, idb, &m).map_err(fail)?.is_some());
            moved = true;
        }
        if !moved {
            return Ok(opened);
        }
    }
}

/// (seal+open ns per 1400-byte payload, end-to-end handshakes per second).
fn e2e_micro() -> Result<(f64, f64), BenchError> {
    let idb = NodeId([2; 32]);
    // One pair rekeyed again and again: each seal past the rekey age
    // starts a new handshake, which the exchange completes.
    let (mut a, mut b) = e2e_pair()?;
    let mut now = Time::from_secs(1);
    a.seal(now, idb, vec![0; 1]).map_err(fail)?;
    exchange(&mut a, &mut b, now)?;
    let before = a.stats().handshakes;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        now = now + E2eConfig::default().rekey_after;
        a.seal(now, idb, vec![0; 1]).map_err(fail)?;
        exchange(&mut a, &mut b, now)?;
    }
    let e2e_hs = (a.stats().handshakes - before) as f64 / start.elapsed().as_secs_f64();
    let now = Time::from_secs(1);

    let (mut a, mut b) = e2e_pair()?;
    a.seal(now, idb, vec![0; 1]).map_err(fail)?;
    exchange(&mut a, &mut b, now)?;
    let ida = NodeId([1; 32]);
    let payload = vec![0x5a; 1400];
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        a.seal(now, idb, payload.clone()).map_err(fail)?;
        let (_, m) = a.poll_transmit().ok_or_else(|| fail("nothing sealed"))?;
        let opened = b.open(now, ida, &m).map_err(fail)?;
        std::hint::black_box(opened);
    }
    Ok((start.elapsed().as_nanos() as f64 / f64::from(n), e2e_hs))
}

/// Link handshakes per second between two endpoints on loopback.
fn handshake_rate() -> Result<f64, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    runtime.block_on(async {
        let td = TrustDomain::new("bench.weft.test").map_err(fail)?;
        let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).map_err(fail)?;
        let make = || -> Result<(SvidCredentials, Arc<SpiffePeerVerifier>), BenchError> {
            let id = NodeIdentity::generate().map_err(fail)?.node_id();
            let svid = ca
                .issue(
                    &id.spiffe_id(&td),
                    SvidAlgorithm::MlDsa65,
                    Validity::starting_now(Duration::from_secs(3600)).map_err(fail)?,
                )
                .map_err(fail)?;
            let creds =
                SvidCredentials::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes())
                    .map_err(fail)?;
            let verifier = SpiffePeerVerifier::new(
                SvidVerifier::new(ca.bundle().map_err(fail)?, RevokedSerials::default()),
                weft_crypto::tls::any_in_trust_domain(),
            );
            Ok((creds, verifier))
        };
        let (sc, sv) = make()?;
        let (cc, cv) = make()?;
        let loopback = "127.0.0.1:0".parse().map_err(fail)?;
        let (server, _) = crate::quic::endpoint(loopback, &sc, sv).map_err(fail)?;
        let (client, client_cfg) = crate::quic::endpoint(loopback, &cc, cv).map_err(fail)?;
        let addr = server.local_addr().map_err(fail)?;
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(incoming) = server.accept().await {
                    tokio::spawn(async move {
                        if let Ok(conn) = incoming.await {
                            conn.closed().await;
                        }
                    });
                }
            }
        });
        let window = Duration::from_secs(2);
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let (client, cfg) = (client.clone(), client_cfg.clone());
            workers.push(tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < window {
                    let Ok(connecting) = client.connect_with(cfg.clone(), addr, "weft-peer") else {
                        break;
                    };
                    if let Ok(conn) = connecting.await {
                        done += 1;
                        conn.close(0u32.into(), b"bench");
                    }
                }
                done
            }));
        }
        let mut total = 0;
        for w in workers {
            total += w.await.map_err(fail)?;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        accept.abort();
        client.close(0u32.into(), b"");
        server.close(0u32.into(), b"");
        Ok(rate)
    })
}

fn tool(name: &str) -> Result<(), BenchError> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(fail(format!(
            "`{name}` is not installed; the dataplane bench needs it (Debian: apt-get install {})",
            if name == "ip" { "iproute2" } else { name }
        )))
    }
}

fn run(args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| fail(format!("{args:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Two namespaces, a veth pair and the agents; torn down on drop.
struct Lab {
    ns: [String; 2],
    agents: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const VETH_ADDRS: [&str; 2] = ["10.233.0.1", "10.233.0.2"];

/// (mesh Gbit/s, mesh loss %, plain UDP Gbit/s).
fn flows(weft: &Path, seconds: u32) -> Result<(f64, f64, f64), BenchError> {
    let uid = Command::new("id").arg("-u").output().map_err(fail)?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err(fail(
            "the dataplane bench needs root (network namespaces and TUN)",
        ));
    }
    tool("ip")?;
    tool("iperf3")?;
    let tag = std::process::id() % 100_000;
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut lab = Lab {
        ns: [format!("weftb{tag}-a"), format!("weftb{tag}-b")],
        agents: Vec::new(),
        _dir: dir,
    };
    let dir = lab._dir.path().to_path_buf();
    let (va, vb) = (format!("wb{tag}a"), format!("wb{tag}b"));
    for ns in &lab.ns {
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    run(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ])?;
    for (i, v) in [&va, &vb].into_iter().enumerate() {
        run(&["ip", "link", "set", v, "netns", &lab.ns[i]])?;
        let cidr = format!("{}/24", VETH_ADDRS[i]);
        run(&["ip", "-n", &lab.ns[i], "addr", "add", &cidr, "dev", v])?;
        run(&["ip", "-n", &lab.ns[i], "link", "set", v, "up"])?;
    }

    let td = TrustDomain::new("bench.weft.test").map_err(fail)?;
    let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).map_err(fail)?;
    let ids = [
        NodeIdentity::generate().map_err(fail)?,
        NodeIdentity::generate().map_err(fail)?,
    ];
    let network = Network {
        trust_domain: td.clone(),
        authority: NodeIdentity::generate().map_err(fail)?.public().signing,
        nodes: ids.iter().map(|i| i.public()).collect(),
        tags: Default::default(),
    };
    for (i, id) in ids.iter().enumerate() {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).map_err(fail)?;
        id.save(&d.join("node.key"), false).map_err(fail)?;
        let svid = ca
            .issue(
                &id.node_id().spiffe_id(&td),
                SvidAlgorithm::MlDsa65,
                Validity::starting_now(Duration::from_secs(3600)).map_err(fail)?,
            )
            .map_err(fail)?;
        svid.save(&d, &ca.bundle_pem()).map_err(fail)?;
        std::fs::write(d.join(NETWORK_FILE), network.to_json()).map_err(fail)?;
        let peers = if i == 0 {
            format!("\"{}:7946\"", VETH_ADDRS[1])
        } else {
            String::new()
        };
        let toml = format!(
            "data_dir = \"{d}\"\nlisten = \"0.0.0.0:7946\"\npeers = [{peers}]\ntun = true\nadmin_socket = \"{d}/agent.sock\"\n",
            d = d.display()
        );
        std::fs::write(d.join("agent.toml"), toml).map_err(fail)?;
        let log = std::fs::File::create(d.join("agent.log")).map_err(fail)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns[i]])
            .arg(weft)
            .args(["agent", "run", "--config"])
            .arg(d.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(fail)?;
        lab.agents.push(child);
    }
    wait_for_route(&dir.join("n0").join("agent.sock"), &ids[1].node_id())?;

    let mesh_dst = mesh_address(&ids[1].node_id()).to_string();
    let plain = iperf(&lab.ns, VETH_ADDRS[1], seconds)?;
    let mesh = iperf(&lab.ns, &mesh_dst, seconds)?;
    Ok((mesh.0, mesh.1, plain.0))
}

fn wait_for_route(socket: &Path, dst: &NodeId) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(routes) = runtime.block_on(crate::admin::request(socket, "routes"))
            && routes
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["dst"] == dst.to_string()))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(fail("the two agents did not link within 20 s"))
}

/// One iperf3 UDP flow from ns[0] to `dst` in ns[1]: (received Gbit/s, lost %).
fn iperf(ns: &[String; 2], dst: &str, seconds: u32) -> Result<(f64, f64), BenchError> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns[1], "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(fail)?;
    // The server needs a moment to listen; the client retries meanwhile.
    let mut out = None;
    for _ in 0..20 {
        let o = Command::new("ip")
            .args([
                "netns", "exec", &ns[0], "iperf3", "-c", dst, "-u", "-b", "0", "-J",
            ])
            .args(["-l", &DATAGRAM.to_string(), "-t", &seconds.to_string()])
            .output()
            .map_err(fail)?;
        if o.status.success() {
            out = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.ok_or_else(|| fail(format!("iperf3 to {dst} failed")))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(fail)?;
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or_else(|| fail("iperf3 reported no received rate"))?;
    let lost = received["lost_percent"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e9, lost))
}
