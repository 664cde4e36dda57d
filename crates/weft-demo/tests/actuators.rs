//! The production actuators the demo's loop has beside the faults it
//! injects: `rotate_credentials` (a new SVID issued by the control plane
//! and put in use by the running agent) and `force_reroute` (route re-selection on a
//! running agent).

use std::time::Duration;

use weft_heal::{ActRequest, ActionId, ActionKind, IncidentId, IncidentKind, Target, Time};

fn request(action: ActionKind, target: Target) -> ActRequest {
    ActRequest {
        id: ActionId {
            incident: IncidentId::new(),
            seq: 0,
            rollback: false,
        },
        action,
        target,
        incident_kind: IncidentKind::ComponentFailure,
        deadline: Time::from_millis(u64::MAX / 2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_credentials_and_force_reroute_act_on_real_agents() {
    let cfg = weft_demo::DemoConfig {
        nodes: 6,
        ..weft_demo::DemoConfig::default()
    };
    let mut demo = weft_demo::start(&cfg, &|line| eprintln!("{line}"))
        .await
        .expect("the system starts");
    let id1 = demo.node_id(1).expect("node 1");

    // rotate_credentials: a new SVID from the control plane, on disk and
    // recorded there, taken by the running agent without a restart (that
    // new links present it is checked in weft-control's agent_sync test).
    let svid = |demo: &weft_demo::Demo| {
        std::fs::read(demo.data_dir(1).expect("dir").join("svid.pem")).expect("svid.pem")
    };
    let serial = async |demo: &weft_demo::Demo| {
        demo.admin()
            .get_node(&id1.to_string())
            .await
            .expect("node view")
            .svid_serial
            .expect("an SVID was issued")
    };
    let (pem_before, serial_before) = (svid(&demo), serial(&demo).await);
    demo.act(&request(ActionKind::RotateCredentials, Target::Node(id1)))
        .await
        .expect("rotate_credentials");
    assert_ne!(svid(&demo), pem_before, "the SVID file was replaced");
    assert_ne!(
        serial(&demo).await,
        serial_before,
        "a new serial was issued"
    );
    demo.wait_converged(Duration::from_secs(20))
        .await
        .expect("the mesh stays converged through the rotation");

    // force_reroute: every link of node 0 re-evaluated; a drained link
    // stays drained and carries no route.
    let id0 = demo.node_id(0).expect("node 0");
    let h0 = demo.agent(0).expect("agent 0");
    let peers = h0.peers().await.expect("peers");
    let drained_peer = peers[0].id;
    assert!(h0.drain(drained_peer, true).await.expect("drain"));
    assert_eq!(h0.reroute().await.expect("reroute"), peers.len());
    demo.act(&request(ActionKind::ForceReroute, Target::Node(id0)))
        .await
        .expect("force_reroute on a node");
    demo.act(&request(ActionKind::ForceReroute, Target::Network))
        .await
        .expect("force_reroute on the network");
    let t = h0.telemetry().await.expect("telemetry");
    assert_eq!(t.drained, vec![drained_peer]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let routes = h0.routes().await.expect("routes");
    assert_eq!(routes.len(), cfg.nodes - 1, "node 0 still reaches everyone");
    assert!(
        routes.iter().all(|(_, r)| r.next_hop != drained_peer),
        "no route uses the drained link: {routes:?}"
    );
    // An action on a node that does not exist changes nothing and says so.
    let stranger = Target::Node(weft_crypto::NodeId([7; 32]));
    assert!(
        demo.act(&request(ActionKind::ForceReroute, stranger))
            .await
            .unwrap_err()
            .contains("unknown node")
    );
    demo.stop().await;
}
