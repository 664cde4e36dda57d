//! The conformance suite: async checks generic over [`Store`], run against
//! both backends unchanged (SQLite in a temporary directory, PostgreSQL in
//! a database made for the test).
//!
//! Each check expects a fresh, empty store. Time is passed explicitly, so
//! no check sleeps or depends on how fast the machine is. A failed check
//! panics with what was expected, like a test assertion.

use std::collections::BTreeSet;
use std::future::Future;

use time::OffsetDateTime;
use time::macros::datetime;
use weft_crypto::{NodeId, SpiffeId, TrustDomain};

use crate::error::StoreError;
use crate::limits::MAX_PAGE_SIZE;
use crate::model::{
    ActionOutcome, ActionStats, AuditFilter, AuditResult, Cursor, Heartbeat, IncidentAction,
    IncidentFilter, IncidentId, IncidentRecord, IncidentStatus, JoinToken, MembershipStamp,
    Network, NetworkId, NetworkName, NewApiToken, NewAuditRecord, NewJoinToken, NewNetwork,
    NewNode, NewPolicy, NodeFilter, NodeKeys, NodeStatus, PageRequest, Role, SecretBytes,
    SecretToken, SvidRecord, Tags,
};
use crate::store::Store;

/// The time the checks start at.
pub const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

fn at(seconds: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(seconds)
}

fn node_id(network: u8, i: u32) -> NodeId {
    let mut id = [network; 32];
    id[28..].copy_from_slice(&i.to_be_bytes());
    NodeId(id)
}

/// Stand-in public keys of node `id` (the store keeps them opaque).
fn keys_of(id: NodeId) -> NodeKeys {
    NodeKeys {
        signing: [&b"sign"[..], &id.0].concat(),
        kem: [&b"kem"[..], &id.0].concat(),
    }
}

fn new_node(network: &Network, id: NodeId) -> NewNode {
    let spiffe_id =
        SpiffeId::from_parts(&network.trust_domain, &format!("/node/{id}")).expect("SPIFFE ID");
    NewNode {
        node_id: id,
        spiffe_id,
        svid: Some(SvidRecord {
            serial: id.0[28..].to_vec(),
            not_after: at(3600),
        }),
        keys: keys_of(id),
    }
}

async fn network<S: Store>(store: &S, name: &str) -> Network {
    store
        .create_network(
            NewNetwork {
                name: NetworkName::new(name).expect("name"),
                trust_domain: TrustDomain::new(&format!("{name}.weft.test")).expect("domain"),
                ca_bundle_pem: format!("bundle of {name}\n"),
                ca_key: SecretBytes::new(format!("key blob of {name}").into_bytes()),
            },
            T0,
        )
        .await
        .expect("create network")
}

async fn join_token<S: Store>(
    store: &S,
    network: &Network,
    uses: u32,
    auto_approve: bool,
) -> (JoinToken, SecretToken) {
    store
        .create_join_token(
            NewJoinToken {
                network_id: network.id,
                description: "test".into(),
                uses,
                expires_at: at(600),
                tags: Tags::new(["role=edge", "zone:a"]).expect("tags"),
                auto_approve,
                created_by: "tester".into(),
            },
            T0,
        )
        .await
        .expect("create join token")
}

fn heartbeat(id: NodeId, second: i64, n: u32) -> Heartbeat {
    Heartbeat {
        node_id: id,
        at: at(second),
        payload: format!("{{\"n\":{n}}}"),
    }
}

/// A fresh store reports the schema version this build expects, answers a
/// ping, and opening it again (running the migrations again) changes
/// neither the version nor the data.
pub async fn migrations_idempotent<S, F, Fut>(open: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = open().await;
    store.ping().await.expect("ping");
    assert_eq!(
        store.schema_version().await.expect("version"),
        crate::SCHEMA_VERSION
    );
    let net = network(&store, "keep").await;
    store.close().await;
    for _ in 0..2 {
        let again = open().await;
        assert_eq!(
            again.schema_version().await.expect("version"),
            crate::SCHEMA_VERSION
        );
        assert_eq!(again.get_network(net.id).await.expect("network"), net);
        again.close().await;
    }
}

/// Networks: create, read by id and name, page through, keep the CA key
/// blob unchanged; duplicates and bad inputs are refused.
pub async fn networks<S: Store>(store: &S) {
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(network(store, &format!("net-{i}")).await);
    }
    let n = &made[2];
    assert_eq!(n.revocation_epoch, 0);
    assert_eq!(n.created_at, T0);
    assert_eq!(store.get_network(n.id).await.expect("get"), *n);
    assert_eq!(
        store.get_network_by_name(&n.name).await.expect("by name"),
        *n
    );
    assert_eq!(
        store.network_ca_key(n.id).await.expect("key").expose(),
        b"key blob of net-2"
    );
    let first = store
        .list_networks(PageRequest::first(3))
        .await
        .expect("list");
    assert_eq!(first.items, made[..3]);
    let second = store
        .list_networks(PageRequest::after(first.next.expect("cursor"), 3))
        .await
        .expect("list");
    assert_eq!(second.items, made[3..]);
    assert!(second.next.is_none());

    let dup = store
        .create_network(
            NewNetwork {
                name: n.name.clone(),
                trust_domain: TrustDomain::new("other.weft.test").expect("domain"),
                ca_bundle_pem: "b".into(),
                ca_key: SecretBytes::new(vec![1]),
            },
            T0,
        )
        .await
        .expect_err("duplicate name");
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");
    let empty_key = store
        .create_network(
            NewNetwork {
                name: NetworkName::new("nokey").expect("name"),
                trust_domain: TrustDomain::new("nokey.weft.test").expect("domain"),
                ca_bundle_pem: "b".into(),
                ca_key: SecretBytes::new(Vec::new()),
            },
            T0,
        )
        .await
        .expect_err("empty key");
    assert!(
        matches!(empty_key, StoreError::InvalidInput { .. }),
        "{empty_key}"
    );
    let missing = store
        .get_network(crate::NetworkId::new())
        .await
        .expect_err("missing");
    assert!(
        matches!(
            missing,
            StoreError::NotFound {
                what: "network",
                ..
            }
        ),
        "{missing}"
    );
    let bad_page = store
        .list_networks(PageRequest::first(MAX_PAGE_SIZE + 1))
        .await
        .expect_err("page too large");
    assert!(matches!(bad_page, StoreError::InvalidInput { .. }));
}

/// Enrollment with a join token: the node gets the token's tags and, with
/// auto-approve, its SVID; a use is spent per enrollment, and a refused
/// enrollment (wrong secret, expired, spent, duplicate node, SPIFFE ID of
/// another trust domain) spends none.
pub async fn enrollment<S: Store>(store: &S) {
    let net = network(store, "enroll").await;
    let other = network(store, "other").await;
    let (token, secret) = join_token(store, &net, 2, true).await;
    assert_eq!((token.max_uses, token.uses_left), (2, 2));
    assert!(
        secret.expose().starts_with("weft_join_"),
        "token text {:?}",
        secret.expose().get(..10)
    );
    assert_eq!(format!("{secret:?}"), "SecretToken(..)");

    let a = node_id(1, 1);
    let done = store
        .enroll_node(secret.expose(), new_node(&net, a), at(1))
        .await
        .expect("enroll");
    assert_eq!(done.node.status, NodeStatus::Approved);
    assert_eq!(done.node.network_id, net.id);
    assert_eq!(done.node.tags, token.tags);
    assert_eq!(done.node.enrolled_at, at(1));
    assert_eq!(done.node.join_token_id, Some(token.id));
    assert_eq!(done.node.svid, new_node(&net, a).svid);
    assert_eq!(done.node.last_seen, None);
    assert_eq!(done.token.uses_left, 1);
    assert_eq!(store.get_node(&a).await.expect("get"), done.node);

    let uses_left = |store: &S| {
        let store = store.clone();
        async move {
            store
                .get_join_token(token.id)
                .await
                .expect("token")
                .uses_left
        }
    };

    // Refusals that spend nothing.
    let again = store
        .enroll_node(secret.expose(), new_node(&net, a), at(2))
        .await
        .expect_err("same node twice");
    assert!(matches!(again, StoreError::Conflict { .. }), "{again}");
    let foreign = store
        .enroll_node(secret.expose(), new_node(&other, node_id(1, 2)), at(2))
        .await
        .expect_err("SPIFFE ID of another trust domain");
    assert!(
        matches!(foreign, StoreError::InvalidInput { .. }),
        "{foreign}"
    );
    let mut wrong = secret.expose().to_owned();
    let last = wrong.pop().expect("char");
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    for bad in [wrong.as_str(), "weft_join_x", ""] {
        let e = store
            .enroll_node(bad, new_node(&net, node_id(1, 3)), at(2))
            .await
            .expect_err("bad token");
        assert!(matches!(e, StoreError::TokenInvalid { .. }), "{e}");
    }
    let late = store
        .enroll_node(secret.expose(), new_node(&net, node_id(1, 4)), at(600))
        .await
        .expect_err("expired");
    assert!(matches!(late, StoreError::TokenExpired { .. }), "{late}");
    assert_eq!(uses_left(store).await, 1);
    assert!(matches!(
        store.get_node(&node_id(1, 2)).await,
        Err(StoreError::NotFound { what: "node", .. })
    ));

    // The last use, then none.
    store
        .enroll_node(secret.expose(), new_node(&net, node_id(1, 5)), at(3))
        .await
        .expect("second use");
    let spent = store
        .enroll_node(secret.expose(), new_node(&net, node_id(1, 6)), at(4))
        .await
        .expect_err("spent");
    assert!(
        matches!(spent, StoreError::TokenExhausted { .. }),
        "{spent}"
    );
    assert_eq!(uses_left(store).await, 0);

    // A token without auto-approve: pending, no SVID, until approved.
    let (_, pending_secret) = join_token(store, &net, 1, false).await;
    let p = node_id(1, 7);
    let pending = store
        .enroll_node(pending_secret.expose(), new_node(&net, p), at(5))
        .await
        .expect("enroll pending");
    assert_eq!(pending.node.status, NodeStatus::Pending);
    assert_eq!(pending.node.svid, None);
    let refused = store
        .record_svid(&p, new_node(&net, p).svid.expect("svid"))
        .await
        .expect_err("pending node holds no SVID");
    assert!(
        matches!(
            refused,
            StoreError::NodeState {
                status: NodeStatus::Pending,
                ..
            }
        ),
        "{refused}"
    );
    let approved = store.approve_node(&p, at(6)).await.expect("approve");
    assert_eq!(approved.status, NodeStatus::Approved);
    assert_eq!(approved.status_changed_at, at(6));
    assert_eq!(
        store.approve_node(&p, at(7)).await.expect("again"),
        approved
    );
    let renewed = SvidRecord {
        serial: vec![9, 9],
        not_after: at(7200),
    };
    let node = store.record_svid(&p, renewed.clone()).await.expect("svid");
    assert_eq!(node.svid, Some(renewed));

    // Tags.
    let tagged = store
        .set_node_tags(&p, Tags::new(["db"]).expect("tags"))
        .await
        .expect("tags");
    assert_eq!(tagged.tags.iter().collect::<Vec<_>>(), ["db"]);

    // Deleting the token keeps its nodes.
    store.delete_join_token(token.id).await.expect("delete");
    assert_eq!(store.get_node(&a).await.expect("node").join_token_id, None);
    let gone = store
        .enroll_node(secret.expose(), new_node(&net, node_id(1, 8)), at(8))
        .await
        .expect_err("deleted token");
    assert!(matches!(gone, StoreError::TokenInvalid { .. }), "{gone}");
    assert!(matches!(
        store.delete_join_token(token.id).await,
        Err(StoreError::NotFound { .. })
    ));

    // Bad token requests.
    for (uses, expires_at) in [
        (0, at(600)),
        (1, T0),
        (crate::limits::MAX_TOKEN_USES + 1, at(600)),
    ] {
        let e = store
            .create_join_token(
                NewJoinToken {
                    network_id: net.id,
                    description: String::new(),
                    uses,
                    expires_at,
                    tags: Tags::empty(),
                    auto_approve: false,
                    created_by: "tester".into(),
                },
                T0,
            )
            .await
            .expect_err("bad token request");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
    // Only the pending token is left.
    let tokens = store
        .list_join_tokens(net.id, PageRequest::first(10))
        .await
        .expect("list tokens");
    assert_eq!(tokens.items.len(), 1);
    assert_eq!(tokens.items[0].uses_left, 0);
    assert!(tokens.next.is_none());
}

/// `tasks` enrollments race for one token with `uses` uses: exactly
/// `uses` succeed, the rest are refused as exhausted, and the token ends
/// with none left.
pub async fn concurrent_redemption<S: Store>(store: &S, uses: u32, tasks: u32) {
    assert!(tasks > uses, "the check needs more tasks than uses");
    let net = network(store, "race").await;
    let (token, secret) = join_token(store, &net, uses, true).await;
    let mut handles = Vec::new();
    for i in 0..tasks {
        let store = store.clone();
        let secret = secret.clone();
        let node = new_node(&net, node_id(2, i));
        handles.push(tokio::spawn(async move {
            store.enroll_node(secret.expose(), node, at(1)).await
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    let mut unexpected = Vec::new();
    for h in handles {
        match h.await.expect("task") {
            Ok(_) => ok += 1,
            Err(StoreError::TokenExhausted { .. }) => exhausted += 1,
            Err(e) => unexpected.push(e.to_string()),
        }
    }
    assert!(unexpected.is_empty(), "unexpected errors: {unexpected:?}");
    assert_eq!(ok, uses, "successful enrollments");
    assert_eq!(exhausted, tasks - uses);
    assert_eq!(
        store
            .get_join_token(token.id)
            .await
            .expect("token")
            .uses_left,
        0
    );
    let nodes = store
        .list_nodes(
            net.id,
            NodeFilter::default(),
            PageRequest::first(MAX_PAGE_SIZE),
        )
        .await
        .expect("nodes");
    assert_eq!(nodes.items.len(), uses as usize);
}

/// Revocation: each revocation bumps the network's epoch by one in the
/// same transaction as the node's status, sequentially and concurrently;
/// the list pages by epoch; a revoked node cannot be approved, renewed,
/// revoked again or send heartbeats.
pub async fn revocation_epochs<S: Store>(store: &S) {
    let net = network(store, "revoke").await;
    let other = network(store, "bystander").await;
    let (_, secret) = join_token(store, &net, 20, true).await;
    let (_, other_secret) = join_token(store, &other, 1, true).await;
    for i in 0..12 {
        store
            .enroll_node(secret.expose(), new_node(&net, node_id(3, i)), at(1))
            .await
            .expect("enroll");
    }
    store
        .enroll_node(
            other_secret.expose(),
            new_node(&other, node_id(4, 0)),
            at(1),
        )
        .await
        .expect("enroll");

    let mut last = 0;
    for i in 0..4 {
        let r = store
            .revoke_node(&node_id(3, i), "compromised", at(10 + i64::from(i)))
            .await
            .expect("revoke");
        assert_eq!(r.epoch, last + 1, "epochs go up by one");
        last = r.epoch;
        assert_eq!(r.node_id, node_id(3, i));
        assert_eq!(
            r.svid_serial,
            new_node(&net, node_id(3, i)).svid.map(|s| s.serial)
        );
        assert_eq!(
            store
                .get_network(net.id)
                .await
                .expect("network")
                .revocation_epoch,
            r.epoch
        );
        let node = store.get_node(&node_id(3, i)).await.expect("node");
        assert_eq!(node.status, NodeStatus::Revoked);
    }

    // A revoked node is refused everything; the epoch stays.
    let r0 = node_id(3, 0);
    for e in [
        store.revoke_node(&r0, "", at(20)).await.map(|_| ()),
        store.approve_node(&r0, at(20)).await.map(|_| ()),
        store
            .record_svid(&r0, new_node(&net, r0).svid.expect("svid"))
            .await
            .map(|_| ()),
        store.record_heartbeat(heartbeat(r0, 20, 0)).await,
    ] {
        let e = e.expect_err("revoked node");
        assert!(
            matches!(
                e,
                StoreError::NodeState {
                    status: NodeStatus::Revoked,
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(
        store
            .get_network(net.id)
            .await
            .expect("network")
            .revocation_epoch,
        4
    );

    // Concurrent revocations get distinct, consecutive epochs.
    let mut handles = Vec::new();
    for i in 4..12 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .revoke_node(&node_id(3, i), "batch", at(30))
                .await
                .map(|r| r.epoch)
        }));
    }
    let mut epochs = BTreeSet::new();
    for h in handles {
        epochs.insert(h.await.expect("task").expect("revoke"));
    }
    assert_eq!(epochs, (5..=12).collect::<BTreeSet<u64>>());

    // Racing to revoke one node: one wins, the epoch moves once.
    let (_, more) = join_token(store, &net, 1, true).await;
    let target = node_id(3, 100);
    store
        .enroll_node(more.expose(), new_node(&net, target), at(40))
        .await
        .expect("enroll");
    let mut handles = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store.revoke_node(&target, "race", at(41)).await
        }));
    }
    let mut wins = 0;
    for h in handles {
        if h.await.expect("task").is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        store
            .get_network(net.id)
            .await
            .expect("network")
            .revocation_epoch,
        13
    );

    // The list, paged by epoch; the other network is untouched.
    let all = store
        .list_revocations(net.id, 0, MAX_PAGE_SIZE)
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        (1..=13).collect::<Vec<_>>()
    );
    let tail = store.list_revocations(net.id, 10, 2).await.expect("list");
    assert_eq!(tail.iter().map(|r| r.epoch).collect::<Vec<_>>(), [11, 12]);
    assert!(
        store
            .list_revocations(other.id, 0, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .get_network(other.id)
            .await
            .expect("network")
            .revocation_epoch,
        0
    );
    assert!(matches!(
        store.list_revocations(crate::NetworkId::new(), 0, 10).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Nodes are listed in id order, filtered by status and tag, in pages.
pub async fn node_listing<S: Store>(store: &S) {
    let net = network(store, "list").await;
    let (_, approve) = join_token(store, &net, 10, true).await;
    let (_, pend) = join_token(store, &net, 10, false).await;
    for i in 0..7 {
        let secret = if i % 2 == 0 { &approve } else { &pend };
        store
            .enroll_node(secret.expose(), new_node(&net, node_id(5, i)), at(1))
            .await
            .expect("enroll");
    }
    store
        .set_node_tags(&node_id(5, 0), Tags::new(["only_me"]).expect("tags"))
        .await
        .expect("tags");
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let p = store
            .list_nodes(net.id, NodeFilter::default(), page.clone())
            .await
            .expect("list");
        seen.extend(p.items.iter().map(|n| n.node_id));
        match p.next {
            Some(next) => page = PageRequest::after(next, 3),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| node_id(5, i)).collect::<Vec<_>>());
    // Many at once: unknown ids are left out, the rest in id order.
    let some = store
        .get_nodes(&[node_id(5, 4), node_id(5, 99), node_id(5, 1), node_id(5, 4)])
        .await
        .expect("get nodes");
    assert_eq!(
        some.iter().map(|n| n.node_id).collect::<Vec<_>>(),
        [node_id(5, 1), node_id(5, 4)]
    );
    assert_eq!(some[0], store.get_node(&node_id(5, 1)).await.expect("node"));
    assert!(store.get_nodes(&[]).await.expect("none").is_empty());
    let too_many = vec![node_id(5, 0); MAX_PAGE_SIZE as usize + 1];
    assert!(matches!(
        store.get_nodes(&too_many).await,
        Err(StoreError::InvalidInput { .. })
    ));
    let pending = store
        .list_nodes(
            net.id,
            NodeFilter {
                status: Some(NodeStatus::Pending),
                tag: None,
            },
            PageRequest::first(100),
        )
        .await
        .expect("pending");
    assert_eq!(pending.items.len(), 3);
    assert!(
        pending
            .items
            .iter()
            .all(|n| n.status == NodeStatus::Pending)
    );
    let tagged = |tag: &str| {
        let store = store.clone();
        let tag = tag.to_owned();
        async move {
            store
                .list_nodes(
                    net.id,
                    NodeFilter {
                        status: None,
                        tag: Some(tag),
                    },
                    PageRequest::first(100),
                )
                .await
                .map(|p| p.items.len())
        }
    };
    assert_eq!(tagged("only_me").await.expect("tag"), 1);
    // `_` is not a wildcard.
    assert_eq!(tagged("onlyxme").await.expect("tag"), 0);
    assert_eq!(tagged("zone:a").await.expect("tag"), 6);
    assert!(matches!(
        tagged("NOT A TAG").await,
        Err(StoreError::InvalidInput { .. })
    ));
    let bad_cursor = store
        .list_nodes(
            net.id,
            NodeFilter::default(),
            PageRequest::after(Cursor::parse("nonsense").expect("cursor"), 3),
        )
        .await
        .expect_err("bad cursor");
    assert!(matches!(bad_cursor, StoreError::InvalidInput { .. }));
}

/// Members: nodes approved at some time, with their keys, in order of
/// approval (time, then node id), paged without skips or repeats; pending
/// nodes are left out and revoked ones kept (the list only grows at its
/// end); the membership stamp moves with every change of membership and
/// not otherwise; bad keys are refused at enrollment.
pub async fn members<S: Store>(store: &S) {
    let net = network(store, "members").await;
    let other = network(store, "elsewhere").await;
    let empty = store.membership_stamp(net.id).await.expect("stamp");
    assert_eq!(
        empty,
        MembershipStamp {
            members: 0,
            last_change_us: 0
        }
    );
    let (_, approve) = join_token(store, &net, 20, true).await;
    let (_, pend) = join_token(store, &net, 20, false).await;
    let (_, foreign) = join_token(store, &other, 5, true).await;
    // Enrolled out of id order, two in the same microsecond.
    let order = [(7u32, 10i64), (3, 11), (9, 11), (1, 12), (5, 13)];
    for (i, second) in order {
        store
            .enroll_node(approve.expose(), new_node(&net, node_id(9, i)), at(second))
            .await
            .expect("enroll");
    }
    store
        .enroll_node(pend.expose(), new_node(&net, node_id(9, 100)), at(14))
        .await
        .expect("enroll pending");
    store
        .enroll_node(foreign.expose(), new_node(&other, node_id(8, 1)), at(14))
        .await
        .expect("enroll elsewhere");
    let list = |page: u32| {
        let store = store.clone();
        async move {
            let mut seen = Vec::new();
            let mut req = PageRequest::first(page);
            loop {
                let p = store.list_members(net.id, req).await.expect("members");
                seen.extend(p.items);
                match p.next {
                    Some(c) => req = PageRequest::after(c, page),
                    None => break,
                }
            }
            seen
        }
    };
    let all = list(2).await;
    let ids: Vec<NodeId> = all.iter().map(|m| m.node_id).collect();
    assert_eq!(
        ids,
        [7, 3, 9, 1, 5].map(|i| node_id(9, i)).to_vec(),
        "enrollment order, ties by node id"
    );
    assert_eq!(all[0].keys, keys_of(node_id(9, 7)));
    assert_eq!(all[0].member_since, at(10));
    assert_eq!(list(1000).await, all);
    let stamp = store.membership_stamp(net.id).await.expect("stamp");
    assert_eq!(stamp.members, 5);
    assert_eq!(
        store.membership_stamp(net.id).await.expect("stamp"),
        stamp,
        "reading changes nothing"
    );

    // A node enrolled pending between others and approved later comes
    // last: no member's place moves. The stamp moves.
    store
        .enroll_node(pend.expose(), new_node(&net, node_id(9, 101)), at(11))
        .await
        .expect("enroll pending");
    store
        .approve_node(&node_id(9, 101), at(19))
        .await
        .expect("approve");
    store
        .approve_node(&node_id(9, 100), at(20))
        .await
        .expect("approve");
    let after_approve = store.membership_stamp(net.id).await.expect("stamp");
    assert_eq!(after_approve.members, 7);
    assert_ne!(after_approve, stamp);
    let grown: Vec<NodeId> = list(4).await.iter().map(|m| m.node_id).collect();
    assert_eq!(
        &grown[..5],
        &ids[..],
        "the earlier members keep their places"
    );
    assert_eq!(&grown[5..], &[node_id(9, 101), node_id(9, 100)]);

    // Revoking keeps it listed (the revocation list says it is revoked);
    // the stamp's time moves.
    store
        .revoke_node(&node_id(9, 3), "gone", at(30))
        .await
        .expect("revoke");
    let after_revoke = store.membership_stamp(net.id).await.expect("stamp");
    assert_eq!(after_revoke.members, 7);
    assert!(after_revoke.last_change_us > after_approve.last_change_us);
    let listed: Vec<NodeId> = list(3).await.iter().map(|m| m.node_id).collect();
    assert_eq!(listed, grown);

    // The other network's members are its own.
    let theirs = store
        .list_members(other.id, PageRequest::first(10))
        .await
        .expect("members");
    assert_eq!(theirs.items.len(), 1);

    // Keys are bounded.
    for keys in [
        NodeKeys {
            signing: Vec::new(),
            kem: vec![1],
        },
        NodeKeys {
            signing: vec![1],
            kem: vec![0; crate::limits::MAX_NODE_KEY_LEN + 1],
        },
    ] {
        let mut n = new_node(&net, node_id(9, 200));
        n.keys = keys;
        let e = store
            .enroll_node(approve.expose(), n, at(40))
            .await
            .expect_err("bad keys");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
    let e = store
        .list_members(
            net.id,
            PageRequest::after(Cursor::parse("nonsense").expect("cursor"), 3),
        )
        .await
        .expect_err("bad cursor");
    assert!(matches!(e, StoreError::InvalidInput { .. }));
}

/// API tokens: the first admin token is made once; a token authenticates
/// with its role until it expires or is revoked; wrong secrets are refused.
pub async fn api_tokens<S: Store>(store: &S) {
    let (admin, admin_secret) = store
        .bootstrap_admin_token("first admin", T0)
        .await
        .expect("bootstrap")
        .expect("first time");
    assert_eq!(admin.role, Role::Admin);
    assert!(
        store
            .bootstrap_admin_token("again", T0)
            .await
            .expect("bootstrap")
            .is_none()
    );
    let who = store
        .authenticate_api_token(admin_secret.expose(), at(1))
        .await
        .expect("authenticate");
    assert_eq!((who.id, who.role), (admin.id, Role::Admin));
    assert_eq!(who.last_used_at, Some(at(1)));
    // Within a minute the use is not written again.
    store
        .authenticate_api_token(admin_secret.expose(), at(30))
        .await
        .expect("authenticate");
    assert_eq!(
        store
            .get_api_token(admin.id)
            .await
            .expect("get")
            .last_used_at,
        Some(at(1))
    );

    let (viewer, viewer_secret) = store
        .create_api_token(
            NewApiToken {
                name: "dashboard".into(),
                role: Role::Viewer,
                expires_at: Some(at(100)),
                created_by: admin.id.to_string(),
            },
            T0,
        )
        .await
        .expect("create");
    assert!(viewer_secret.expose().starts_with("weft_api_"));
    assert_eq!(
        store
            .authenticate_api_token(viewer_secret.expose(), at(99))
            .await
            .expect("valid")
            .role,
        Role::Viewer
    );
    let expired = store
        .authenticate_api_token(viewer_secret.expose(), at(100))
        .await
        .expect_err("expired");
    assert!(
        matches!(expired, StoreError::TokenExpired { .. }),
        "{expired}"
    );

    let mut wrong = admin_secret.expose().to_owned();
    let last = wrong.pop().expect("char");
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    for bad in [wrong.as_str(), "", "weft_api_", "Bearer x"] {
        let e = store
            .authenticate_api_token(bad, at(2))
            .await
            .expect_err("bad");
        assert!(matches!(e, StoreError::TokenInvalid { .. }), "{e}");
    }

    let revoked = store
        .revoke_api_token(admin.id, at(50))
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(at(50)));
    // Revoking again keeps the first time.
    assert_eq!(
        store
            .revoke_api_token(admin.id, at(60))
            .await
            .expect("again")
            .revoked_at,
        Some(at(50))
    );
    let e = store
        .authenticate_api_token(admin_secret.expose(), at(51))
        .await
        .expect_err("revoked");
    assert!(matches!(e, StoreError::TokenRevoked { .. }), "{e}");
    assert!(
        store
            .bootstrap_admin_token("after revoke", at(52))
            .await
            .expect("bootstrap")
            .is_none(),
        "the first admin token is made once, even after it is revoked"
    );

    let list = store
        .list_api_tokens(PageRequest::first(10))
        .await
        .expect("list");
    assert_eq!(
        list.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        [admin.id, viewer.id]
    );
    for bad in [
        NewApiToken {
            name: String::new(),
            role: Role::Viewer,
            expires_at: None,
            created_by: "x".into(),
        },
        NewApiToken {
            name: "x".repeat(300),
            role: Role::Viewer,
            expires_at: None,
            created_by: "x".into(),
        },
        NewApiToken {
            name: "past".into(),
            role: Role::Viewer,
            expires_at: Some(T0),
            created_by: "x".into(),
        },
    ] {
        let e = store.create_api_token(bad, T0).await.expect_err("bad");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
}

/// Audit: records come back newest first, in pages that neither skip nor
/// repeat (also among records with the same time), filtered; old ones are
/// pruned; bad inputs are refused.
pub async fn audit_pagination<S: Store>(store: &S) {
    let net = network(store, "audited").await;
    let mut made = Vec::new();
    for i in 0..25i64 {
        let r = store
            .append_audit(NewAuditRecord {
                // Pairs share a time, so the cursor must break ties.
                at: at(i / 2),
                actor: if i % 3 == 0 { "alice" } else { "bob" }.into(),
                action: if i % 5 == 0 {
                    "node.revoke"
                } else {
                    "node.approve"
                }
                .into(),
                target: Some(format!("node-{i}")),
                network_id: (i % 2 == 0).then_some(net.id),
                result: if i == 7 {
                    AuditResult::Denied
                } else {
                    AuditResult::Success
                },
                detail: format!("record {i}"),
            })
            .await
            .expect("append");
        made.push(r);
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(10);
    let mut pages = 0;
    loop {
        let p = store
            .list_audit(AuditFilter::default(), page.clone())
            .await
            .expect("list");
        pages += 1;
        seen.extend(p.items);
        match p.next {
            Some(next) => page = PageRequest::after(next, 10),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let ids: BTreeSet<_> = seen.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 25, "no record twice");
    assert!(
        seen.windows(2)
            .all(|w| (w[0].at, w[0].id) > (w[1].at, w[1].id)),
        "newest first"
    );
    let mut expected = made.clone();
    expected.sort_by_key(|r| std::cmp::Reverse((r.at, r.id)));
    assert_eq!(seen, expected);

    let list = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit(filter, PageRequest::first(100))
                .await
                .expect("list")
                .items
        }
    };
    let alice = list(AuditFilter {
        actor: Some("alice".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(alice.len(), 9);
    assert!(alice.iter().all(|r| r.actor == "alice"));
    let revokes = list(AuditFilter {
        action: Some("node.revoke".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(revokes.len(), 5);
    let denied = list(AuditFilter {
        result: Some(AuditResult::Denied),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].target.as_deref(), Some("node-7"));
    let in_net = list(AuditFilter {
        network_id: Some(net.id),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(in_net.len(), 13);
    let window = list(AuditFilter {
        since: Some(at(3)),
        until: Some(at(5)),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(window.len(), 4);
    let combined = list(AuditFilter {
        actor: Some("bob".into()),
        target: Some("node-1".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(combined.len(), 1);

    assert_eq!(store.prune_audit(at(2)).await.expect("prune"), 4);
    assert_eq!(list(AuditFilter::default()).await.len(), 21);

    let bad = |actor: &str, action: &str, detail: usize| NewAuditRecord {
        at: T0,
        actor: actor.into(),
        action: action.into(),
        target: None,
        network_id: None,
        result: AuditResult::Success,
        detail: "d".repeat(detail),
    };
    for r in [
        bad("", "x", 0),
        bad("a", "", 0),
        bad("a", "Node Revoke", 0),
        bad("a", "x", crate::limits::MAX_DETAIL_LEN + 1),
        bad(&"a".repeat(257), "x", 0),
    ] {
        let e = store.append_audit(r).await.expect_err("bad record");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
    for cursor in ["1", "x.y", "12.nothex"] {
        let e = store
            .list_audit(
                AuditFilter::default(),
                PageRequest::after(Cursor::parse(cursor).expect("cursor"), 5),
            )
            .await
            .expect_err("bad cursor");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
}

/// Heartbeats: the latest is kept per node (a late, older one does not
/// replace it), the history holds the newest `history` heartbeats and
/// prunes the rest, and `last_seen` follows.
pub async fn heartbeat_history<S: Store>(store: &S, history: u32) {
    let net = network(store, "beat").await;
    let (_, secret) = join_token(store, &net, 3, true).await;
    let (a, b) = (node_id(6, 1), node_id(6, 2));
    for id in [a, b] {
        store
            .enroll_node(secret.expose(), new_node(&net, id), T0)
            .await
            .expect("enroll");
    }
    assert_eq!(store.latest_heartbeat(&a).await.expect("none yet"), None);
    let total = history * 2 + 3;
    for n in 0..total {
        store
            .record_heartbeat(heartbeat(a, 10 + i64::from(n), n))
            .await
            .expect("heartbeat");
    }
    store
        .record_heartbeat(heartbeat(b, 5, 0))
        .await
        .expect("heartbeat");
    let kept = store
        .heartbeat_history(&a, MAX_PAGE_SIZE)
        .await
        .expect("history");
    assert_eq!(
        kept.len(),
        history as usize,
        "history is pruned to its bound"
    );
    assert_eq!(
        kept.iter().map(|h| h.payload.clone()).collect::<Vec<_>>(),
        (total - history..total)
            .rev()
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect::<Vec<_>>(),
        "the newest are kept, newest first"
    );
    assert_eq!(
        store.heartbeat_history(&b, 10).await.expect("b").len(),
        1,
        "pruning one node leaves the others"
    );
    let latest = store
        .latest_heartbeat(&a)
        .await
        .expect("latest")
        .expect("some");
    assert_eq!(latest, heartbeat(a, 10 + i64::from(total - 1), total - 1));

    // A late heartbeat with an older time enters the history but is not
    // the latest state, and does not move last_seen back.
    store
        .record_heartbeat(heartbeat(a, 1, 999))
        .await
        .expect("late");
    assert_eq!(
        store.latest_heartbeat(&a).await.expect("latest"),
        Some(latest.clone())
    );
    let history_now = store.heartbeat_history(&a, 1).await.expect("history");
    assert_eq!(history_now[0].payload, "{\"n\":999}");
    assert_eq!(
        store.get_node(&a).await.expect("node").last_seen,
        Some(latest.at)
    );

    let all = store
        .latest_heartbeats(net.id, PageRequest::first(1))
        .await
        .expect("latest of all");
    assert_eq!(all.items.len(), 1);
    let rest = store
        .latest_heartbeats(net.id, PageRequest::after(all.next.expect("next"), 1))
        .await
        .expect("latest of all");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next.is_none());

    // A batch: refused heartbeats are reported and skipped, the rest kept.
    let outcomes = store
        .record_heartbeats(&[
            heartbeat(b, 100, 1),
            heartbeat(node_id(6, 99), 100, 0),
            Heartbeat {
                node_id: b,
                at: at(101),
                payload: "[]".into(),
            },
            heartbeat(b, 102, 2),
        ])
        .await
        .expect("batch");
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(StoreError::NotFound { .. })));
    assert!(matches!(outcomes[2], Err(StoreError::InvalidInput { .. })));
    assert_eq!(
        store.latest_heartbeat(&b).await.expect("latest"),
        Some(heartbeat(b, 102, 2))
    );
    assert_eq!(store.heartbeat_history(&b, 10).await.expect("b").len(), 3);
    let too_many = vec![heartbeat(b, 1, 0); crate::limits::MAX_HEARTBEAT_BATCH + 1];
    assert!(matches!(
        store.record_heartbeats(&too_many).await,
        Err(StoreError::InvalidInput { .. })
    ));

    let unknown = store
        .record_heartbeat(heartbeat(node_id(6, 99), 1, 0))
        .await
        .expect_err("unknown node");
    assert!(
        matches!(unknown, StoreError::NotFound { what: "node", .. }),
        "{unknown}"
    );
    for payload in [
        "not json".to_owned(),
        "[1]".to_owned(),
        "{\"open\":".to_owned(),
        format!(
            "{{\"x\":\"{}\"}}",
            "a".repeat(crate::limits::MAX_HEARTBEAT_LEN)
        ),
    ] {
        let e = store
            .record_heartbeat(Heartbeat {
                node_id: a,
                at: at(1000),
                payload,
            })
            .await
            .expect_err("bad payload");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
}

/// Policies: versions 1, 2, ... per network; an edit based on a stale
/// version is a conflict; any version can be read back; listings page
/// newest first.
pub async fn policies<S: Store>(store: &S) {
    let net = network(store, "policy").await;
    let other = network(store, "policy-other").await;
    let put = |doc: &str, base: Option<u32>, network_id| NewPolicy {
        network_id,
        document: doc.into(),
        author: "alice".into(),
        base_version: base,
    };
    let missing = store.get_policy(net.id, None).await.expect_err("none yet");
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
    let v1 = store
        .put_policy(put("allow all", Some(0), net.id), at(1))
        .await
        .expect("v1");
    assert_eq!(v1.version, 1);
    let v2 = store
        .put_policy(put("allow some", Some(1), net.id), at(2))
        .await
        .expect("v2");
    assert_eq!(v2.version, 2);
    let stale = store
        .put_policy(put("stale edit", Some(1), net.id), at(3))
        .await
        .expect_err("stale");
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    let v3 = store
        .put_policy(put("forced", None, net.id), at(4))
        .await
        .expect("v3");
    assert_eq!(v3.version, 3);
    assert_eq!(
        store
            .put_policy(put("elsewhere", Some(0), other.id), at(5))
            .await
            .expect("other network")
            .version,
        1,
        "versions count per network"
    );
    assert_eq!(store.get_policy(net.id, None).await.expect("latest"), v3);
    assert_eq!(store.get_policy(net.id, Some(1)).await.expect("v1"), v1);
    assert!(matches!(
        store.get_policy(net.id, Some(9)).await,
        Err(StoreError::NotFound { .. })
    ));
    let first = store
        .list_policies(net.id, PageRequest::first(2))
        .await
        .expect("list");
    assert_eq!(
        first.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        [3, 2]
    );
    assert_eq!(first.items[1].size, "allow some".len() as u64);
    let rest = store
        .list_policies(net.id, PageRequest::after(first.next.expect("next"), 2))
        .await
        .expect("list");
    assert_eq!(
        rest.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        [1]
    );
    assert!(rest.next.is_none());
    for bad in [
        put("", None, net.id),
        put(&"p".repeat(crate::limits::MAX_POLICY_LEN + 1), None, net.id),
    ] {
        let e = store.put_policy(bad, at(6)).await.expect_err("bad");
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    }
    let nowhere = store
        .put_policy(put("x", None, crate::NetworkId::new()), at(6))
        .await
        .expect_err("unknown network");
    assert!(
        matches!(
            nowhere,
            StoreError::NotFound {
                what: "network",
                ..
            }
        ),
        "{nowhere}"
    );
}

fn incident(network_id: Option<NetworkId>, kind: &str, opened: i64) -> IncidentRecord {
    IncidentRecord {
        id: IncidentId::new(),
        network_id,
        kind: kind.into(),
        status: IncidentStatus::Open,
        severity: "major".into(),
        target: format!("node:{}", node_id(9, opened as u32)),
        opened_at: at(opened),
        updated_at: at(opened),
        resolved_at: None,
        document: format!("{{\"evidence\":[{opened}],\"timeline\":[]}}"),
        actions: Vec::new(),
    }
}

fn action(seq: u32, name: &str, outcome: ActionOutcome, second: i64) -> IncidentAction {
    IncidentAction {
        seq,
        action: name.into(),
        target: "link:a-b".into(),
        outcome,
        started_at: at(second),
        finished_at: (outcome != ActionOutcome::Pending).then(|| at(second + 10)),
    }
}

/// Incidents: stored and read back whole, replaced by newer versions but
/// never by older ones, listed newest first with filters and pages,
/// action outcomes counted per (kind, action), resolved ones pruned; bad
/// inputs refused naming the field.
pub async fn incidents<S: Store>(store: &S) {
    let net = network(store, "heal").await;
    let mut a = incident(Some(net.id), "link_degraded", 10);
    a.actions = vec![
        action(0, "drain_link", ActionOutcome::Failed, 11),
        action(1, "force_reroute", ActionOutcome::Pending, 30),
    ];
    assert!(store.put_incident(a.clone()).await.expect("put"));
    assert_eq!(store.get_incident(a.id).await.expect("get"), a);

    // A newer version replaces everything, actions included.
    let mut a2 = a.clone();
    a2.kind = "partition".into();
    a2.status = IncidentStatus::Resolved;
    a2.severity = "critical".into();
    a2.updated_at = at(50);
    a2.resolved_at = Some(at(50));
    a2.document = "{\"timeline\":[\"resolved\"]}".into();
    a2.actions[1] = action(1, "force_reroute", ActionOutcome::Succeeded, 30);
    assert!(store.put_incident(a2.clone()).await.expect("put newer"));
    assert_eq!(store.get_incident(a.id).await.expect("get"), a2);
    // An older version changes nothing.
    assert!(!store.put_incident(a.clone()).await.expect("put older"));
    assert_eq!(store.get_incident(a.id).await.expect("get"), a2);
    // The same version again is stored again (idempotent).
    assert!(store.put_incident(a2.clone()).await.expect("put same"));

    let mut b = incident(None, "overload", 20);
    b.actions = vec![
        action(0, "shed_load", ActionOutcome::Succeeded, 21),
        action(1, "restart_process", ActionOutcome::Failed, 40),
        action(2, "shed_load", ActionOutcome::Succeeded, 60),
    ];
    store.put_incident(b.clone()).await.expect("put b");
    let mut c = incident(Some(net.id), "overload", 30);
    c.status = IncidentStatus::Escalated;
    c.actions = vec![action(0, "shed_load", ActionOutcome::Failed, 31)];
    store.put_incident(c.clone()).await.expect("put c");
    let d = incident(Some(net.id), "node_down", 40);
    store.put_incident(d.clone()).await.expect("put d");

    let ids = |page: crate::model::Page<crate::model::IncidentSummary>| {
        page.items.into_iter().map(|i| i.id).collect::<Vec<_>>()
    };
    let everything = store
        .list_incidents(IncidentFilter::default(), PageRequest::first(10))
        .await
        .expect("list");
    assert_eq!(ids(everything.clone()), [d.id, c.id, b.id, a.id]);
    let c_summary = &everything.items[1];
    assert_eq!(
        (c_summary.kind.as_str(), c_summary.status, &c_summary.target),
        ("overload", IncidentStatus::Escalated, &c.target)
    );
    let first = store
        .list_incidents(IncidentFilter::default(), PageRequest::first(3))
        .await
        .expect("page 1");
    let second = store
        .list_incidents(
            IncidentFilter::default(),
            PageRequest::after(first.next.clone().expect("cursor"), 3),
        )
        .await
        .expect("page 2");
    assert_eq!(ids(first), [d.id, c.id, b.id]);
    assert_eq!(ids(second.clone()), [a.id]);
    assert!(second.next.is_none());
    let unresolved = IncidentFilter {
        unresolved: true,
        ..IncidentFilter::default()
    };
    assert_eq!(
        ids(store
            .list_incidents(unresolved, PageRequest::first(10))
            .await
            .expect("unresolved")),
        [d.id, c.id, b.id]
    );
    let overloads_in_net = IncidentFilter {
        kind: Some("overload".into()),
        network_id: Some(net.id),
        ..IncidentFilter::default()
    };
    assert_eq!(
        ids(store
            .list_incidents(overloads_in_net, PageRequest::first(10))
            .await
            .expect("kind and network")),
        [c.id]
    );
    let resolved = IncidentFilter {
        status: Some(IncidentStatus::Resolved),
        ..IncidentFilter::default()
    };
    assert_eq!(
        ids(store
            .list_incidents(resolved, PageRequest::first(10))
            .await
            .expect("resolved")),
        [a.id]
    );

    let stats = |kind: &str, action: &str, succeeded: u64, failed: u64| ActionStats {
        incident_kind: kind.into(),
        action: action.into(),
        succeeded,
        failed,
    };
    assert_eq!(
        store.action_stats(None).await.expect("stats"),
        [
            stats("overload", "restart_process", 0, 1),
            stats("overload", "shed_load", 2, 1),
            stats("partition", "drain_link", 0, 1),
            stats("partition", "force_reroute", 1, 0),
        ]
    );
    assert_eq!(
        store.action_stats(Some("partition")).await.expect("stats"),
        [
            stats("partition", "drain_link", 0, 1),
            stats("partition", "force_reroute", 1, 0),
        ]
    );
    assert!(
        store
            .action_stats(Some("node_down"))
            .await
            .expect("none")
            .is_empty()
    );

    // Only resolved incidents resolved before the cutoff go.
    assert_eq!(store.prune_incidents(at(50)).await.expect("prune"), 0);
    assert_eq!(store.prune_incidents(at(51)).await.expect("prune"), 1);
    assert!(matches!(
        store.get_incident(a.id).await,
        Err(StoreError::NotFound {
            what: "incident",
            ..
        })
    ));
    assert_eq!(
        store.action_stats(Some("partition")).await.expect("stats"),
        []
    );
    store.get_incident(b.id).await.expect("b stays");

    // Refusals name what is wrong.
    let refused = |r: Result<bool, StoreError>, field: &str| {
        assert!(
            matches!(&r, Err(StoreError::InvalidInput { what, .. }) if *what == field),
            "expected {field} to be refused, got {r:?}"
        );
    };
    let base = incident(None, "node_down", 70);
    for (bad, field) in [
        (
            IncidentRecord {
                kind: "Node Down".into(),
                ..base.clone()
            },
            "incident kind",
        ),
        (
            IncidentRecord {
                severity: String::new(),
                ..base.clone()
            },
            "incident severity",
        ),
        (
            IncidentRecord {
                target: "x".repeat(crate::limits::MAX_TARGET_LEN + 1),
                ..base.clone()
            },
            "incident target",
        ),
        (
            IncidentRecord {
                document: "[1]".into(),
                ..base.clone()
            },
            "incident document",
        ),
        (
            IncidentRecord {
                document: "{".into(),
                ..base.clone()
            },
            "incident document",
        ),
        (
            IncidentRecord {
                document: format!(
                    "{{\"x\":\"{}\"}}",
                    "y".repeat(crate::limits::MAX_INCIDENT_DOCUMENT_LEN)
                ),
                ..base.clone()
            },
            "incident document",
        ),
        (
            IncidentRecord {
                status: IncidentStatus::Resolved,
                ..base.clone()
            },
            "incident resolved_at",
        ),
        (
            IncidentRecord {
                updated_at: at(69),
                ..base.clone()
            },
            "incident updated_at",
        ),
        (
            IncidentRecord {
                actions: (0..=crate::limits::MAX_INCIDENT_ACTIONS as u32)
                    .map(|i| action(i, "shed_load", ActionOutcome::Failed, 70))
                    .collect(),
                ..base.clone()
            },
            "incident actions",
        ),
        (
            IncidentRecord {
                actions: vec![
                    action(0, "shed_load", ActionOutcome::Failed, 70),
                    action(0, "shed_load", ActionOutcome::Failed, 71),
                ],
                ..base.clone()
            },
            "incident action seq",
        ),
        (
            IncidentRecord {
                actions: vec![action(0, "shed-load", ActionOutcome::Failed, 70)],
                ..base.clone()
            },
            "incident action",
        ),
        (
            IncidentRecord {
                actions: vec![IncidentAction {
                    finished_at: None,
                    ..action(0, "shed_load", ActionOutcome::Failed, 70)
                }],
                ..base.clone()
            },
            "incident action finished_at",
        ),
    ] {
        refused(store.put_incident(bad).await, field);
    }
    assert!(matches!(
        store.get_incident(base.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let mut orphan = base.clone();
    orphan.network_id = Some(NetworkId::new());
    assert!(matches!(
        store.put_incident(orphan).await,
        Err(StoreError::NotFound {
            what: "network",
            ..
        })
    ));
    assert!(matches!(
        store
            .list_incidents(
                IncidentFilter {
                    kind: Some("BAD".into()),
                    ..IncidentFilter::default()
                },
                PageRequest::first(10)
            )
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        store
            .list_incidents(
                IncidentFilter::default(),
                PageRequest::after(Cursor::parse("nope").expect("cursor"), 10)
            )
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
}

/// Rows changed behind the store's back (by `exec`, which runs one SQL
/// statement on the same database) read back as
/// [`StoreError::Corrupt`], naming the record, never as a panic.
pub async fn corrupt_rows_are_errors<S, F, Fut>(store: &S, exec: F)
where
    S: Store,
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let net = network(store, "corrupt").await;
    let (token, secret) = join_token(store, &net, 1, true).await;
    let id = node_id(7, 1);
    store
        .enroll_node(secret.expose(), new_node(&net, id), T0)
        .await
        .expect("enroll");
    let expect_corrupt = |result: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{what}: expected a corrupt-record error, got {result:?}"
        );
    };
    let node = format!("node_id = '{id}'");
    for (sql, what) in [
        (
            format!("UPDATE nodes SET tags = '{{' WHERE {node}"),
            "tags not JSON",
        ),
        (
            format!("UPDATE nodes SET tags = '[\"UPPER\"]' WHERE {node}"),
            "tag breaking the rules",
        ),
        (
            format!("UPDATE nodes SET tags = '[]', spiffe_id = 'not a SPIFFE ID' WHERE {node}"),
            "bad SPIFFE ID",
        ),
        (
            format!(
                "UPDATE nodes SET spiffe_id = 'spiffe://corrupt.weft.test/node/x', \
                 svid_serial = NULL WHERE {node}"
            ),
            "half an SVID",
        ),
    ] {
        exec(sql).await;
        expect_corrupt(store.get_node(&id).await.map(|_| ()), what);
        expect_corrupt(
            store
                .list_nodes(net.id, NodeFilter::default(), PageRequest::first(10))
                .await
                .map(|_| ()),
            what,
        );
    }
    exec(format!(
        "UPDATE networks SET created_at = 9223372036854775807 WHERE name = '{}'",
        net.name
    ))
    .await;
    expect_corrupt(
        store.get_network(net.id).await.map(|_| ()),
        "time out of range",
    );
    exec(format!(
        "UPDATE join_tokens SET description = '{}'",
        "d".repeat(crate::limits::MAX_TEXT_LEN + 1)
    ))
    .await;
    expect_corrupt(
        store.get_join_token(token.id).await.map(|_| ()),
        "text over its limit",
    );
    let inc = incident(None, "node_down", 5);
    assert!(store.put_incident(inc.clone()).await.expect("put incident"));
    exec(format!(
        "UPDATE incidents SET kind = 'Node Down' WHERE target = '{}'",
        inc.target
    ))
    .await;
    expect_corrupt(
        store.get_incident(inc.id).await.map(|_| ()),
        "incident kind breaking the rules",
    );
    expect_corrupt(
        store
            .list_incidents(IncidentFilter::default(), PageRequest::first(10))
            .await
            .map(|_| ()),
        "incident kind breaking the rules",
    );
}

/// History rows written before schema 4 have no `node_key`: the store
/// writes it when it opens, and the history reads as before. `exec` runs
/// SQL on the database behind the store's back; `open` opens it again.
pub async fn history_before_schema_4_is_keyed_at_open<S, F, Fut, E, EFut>(open: F, exec: E)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    E: Fn(String) -> EFut,
    EFut: Future<Output = ()>,
{
    let store = open().await;
    let net = network(&store, "rekey").await;
    let (_, secret) = join_token(&store, &net, 2, true).await;
    let (a, b) = (node_id(8, 1), node_id(8, 2));
    for id in [a, b] {
        store
            .enroll_node(secret.expose(), new_node(&net, id), T0)
            .await
            .expect("enroll");
    }
    for n in 0..3 {
        for id in [a, b] {
            store
                .record_heartbeat(heartbeat(id, 10 + n, n as u32))
                .await
                .expect("heartbeat");
        }
    }
    store.close().await;
    exec("UPDATE heartbeat_history SET node_key = NULL".into()).await;
    let store = open().await;
    for id in [a, b] {
        let history = store.heartbeat_history(&id, 10).await.expect("history");
        assert_eq!(
            history
                .iter()
                .map(|h| h.payload.clone())
                .collect::<Vec<_>>(),
            ["{\"n\":2}", "{\"n\":1}", "{\"n\":0}"],
            "{id}"
        );
    }
    store.close().await;
}
