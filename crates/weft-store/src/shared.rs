//! The [`Store`] implementation both backends share.
//!
//! This file is compiled twice, as a child module of `sqlite` and of
//! `postgres`: each parent names its sqlx database as `Db` and its store
//! as `Backend`, which provides `reader()` (a pool for reads), `writer()`
//! (a pool for writes), `begin()` (a write transaction) and
//! `begin_heartbeats()` (a heartbeat batch's transaction). The SQL is the
//! same on both: `$n` placeholders (SQLite reads them by number),
//! `RETURNING`, `ON CONFLICT`, row-value comparisons, integers as 64-bit,
//! ids as UUIDs (a blob in SQLite), times as microseconds.

use sqlx::{Database, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;
use weft_crypto::{NodeId, SpiffeId, TrustDomain};

use super::{Backend, Db};
use crate::error::{Result, StoreError};
use crate::limits::*;
use crate::model::{
    ActionOutcome, ActionStats, ApiToken, ApiTokenId, AuditFilter, AuditId, AuditRecord,
    AuditResult, Cursor, Enrolled, Heartbeat, IncidentAction, IncidentFilter, IncidentId,
    IncidentRecord, IncidentStatus, IncidentSummary, JoinToken, JoinTokenId, Member,
    MembershipStamp, Network, NetworkId, NetworkName, NewApiToken, NewAuditRecord, NewJoinToken,
    NewNetwork, NewNode, NewPolicy, Node, NodeFilter, NodeKeys, NodeStatus, Page, PageRequest,
    Policy, PolicySummary, Revocation, Role, SecretBytes, SecretToken, SvidRecord, Tags,
    check_nonempty, check_text, from_micros, to_micros,
};
use crate::secret::{self, TokenKind};
use crate::store::Store;

type DbRow = <Db as Database>::Row;

const NETWORK_COLS: &str = "id, name, trust_domain, ca_bundle_pem, revocation_epoch, created_at";
const TOKEN_COLS: &str = "id, network_id, description, max_uses, uses_left, expires_at, tags, \
                          auto_approve, created_at, created_by";
/// A node's columns. `last_seen` is its latest heartbeat's time, read
/// from `heartbeats_latest` (which holds each node's newest time) rather
/// than kept in the node's row: copying it there rewrote every reporting
/// node's row, keys included, in each heartbeat batch. The `nodes.last_seen`
/// column of schemas 1 to 3 is no longer written or read.
const NODE_COLS: &str = "node_id, network_id, spiffe_id, status, tags, enrolled_at, \
                         status_changed_at, join_token_id, svid_serial, svid_not_after, \
                         (SELECT h.at FROM heartbeats_latest h WHERE h.node_id = nodes.node_id) \
                         AS last_seen";
const REVOCATION_COLS: &str =
    "network_id, epoch, node_id, spiffe_id, svid_serial, revoked_at, reason";
const API_COLS: &str =
    "id, name, role, created_at, created_by, expires_at, revoked_at, last_used_at";
const AUDIT_COLS: &str = "id, at, actor, action, target, network_id, result, detail";
const INCIDENT_COLS: &str =
    "id, network_id, kind, status, severity, target, opened_at, updated_at, resolved_at";
const INCIDENT_ACTION_COLS: &str = "seq, action, target, outcome, started_at, finished_at";

/// The `store_events` row that marks the first admin token as made.
const FIRST_ADMIN_EVENT: &str = "first_admin_token";
/// An API token's use is recorded at most this often.
const LAST_USED_GRANULARITY_US: i64 = 60_000_000;

/// A node's key in `heartbeat_history` (schema 4): the four 8-byte words
/// of its id XORed together, as a signed integer. Every byte counts, so
/// ids that differ anywhere (not only digests, which are uniform) get
/// different keys but for chance.
fn history_key(id: &NodeId) -> i64 {
    id.0.chunks_exact(8).fold(0i64, |key, word| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        key ^ i64::from_le_bytes(bytes)
    })
}

/// Writes the history key of the rows written before schema 4, a node at
/// a time; nothing to do once done.
pub(super) async fn key_history(pool: &sqlx::Pool<Db>) -> Result<()> {
    const DO: &str = "key the heartbeat history";
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT node_id FROM heartbeat_history WHERE node_key IS NULL")
            .fetch_all(pool)
            .await
            .map_err(StoreError::db(DO))?;
    for text in ids {
        let id: NodeId = text
            .parse()
            .map_err(|e| StoreError::corrupt("heartbeat", &text, format!("node id: {e}")))?;
        sqlx::query(
            "UPDATE heartbeat_history SET node_key = $1 WHERE node_id = $2 AND node_key IS NULL",
        )
        .bind(history_key(&id))
        .bind(&text)
        .execute(pool)
        .await
        .map_err(StoreError::db(DO))?;
    }
    Ok(())
}

// ------------------------------------------------------------ row decoding

/// Reads column `col` of a `what` record `id`; a missing column or a value
/// of the wrong type is [`StoreError::Corrupt`].
fn col<'r, T>(row: &'r DbRow, col: &'static str, what: &'static str, id: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get(col)
        .map_err(|e| StoreError::corrupt(what, id, format!("column {col}: {e}")))
}

fn count<T: TryFrom<i64>>(v: i64, col: &str, what: &'static str, id: &str) -> Result<T> {
    T::try_from(v)
        .map_err(|_| StoreError::corrupt(what, id, format!("column {col}: {v} is out of range")))
}

fn time_col(
    row: &DbRow,
    name: &'static str,
    what: &'static str,
    id: &str,
) -> Result<OffsetDateTime> {
    from_micros(col(row, name, what, id)?, what, &id)
}

fn opt_time_col(
    row: &DbRow,
    name: &'static str,
    what: &'static str,
    id: &str,
) -> Result<Option<OffsetDateTime>> {
    col::<Option<i64>>(row, name, what, id)?
        .map(|us| from_micros(us, what, &id))
        .transpose()
}

fn text_col(
    row: &DbRow,
    name: &'static str,
    what: &'static str,
    id: &str,
    max: usize,
) -> Result<String> {
    let s: String = col(row, name, what, id)?;
    if s.len() > max {
        return Err(StoreError::corrupt(
            what,
            id,
            format!("column {name} is {} bytes; the limit is {max}", s.len()),
        ));
    }
    Ok(s)
}

fn parse_col<T: std::str::FromStr>(
    row: &DbRow,
    name: &'static str,
    what: &'static str,
    id: &str,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = col(row, name, what, id)?;
    s.parse()
        .map_err(|e| StoreError::corrupt(what, id, format!("column {name}: {e}")))
}

fn network_from_row(row: &DbRow) -> Result<Network> {
    const W: &str = "network";
    let id: Uuid = col(row, "id", W, "?")?;
    let ids = id.to_string();
    let name: String = col(row, "name", W, &ids)?;
    let trust_domain: String = col(row, "trust_domain", W, &ids)?;
    Ok(Network {
        id: NetworkId(id),
        name: NetworkName::new(&name).map_err(|e| StoreError::corrupt(W, &ids, e))?,
        trust_domain: TrustDomain::new(&trust_domain)
            .map_err(|e| StoreError::corrupt(W, &ids, e))?,
        ca_bundle_pem: text_col(row, "ca_bundle_pem", W, &ids, MAX_CA_BUNDLE_LEN)?,
        revocation_epoch: count(
            col(row, "revocation_epoch", W, &ids)?,
            "revocation_epoch",
            W,
            &ids,
        )?,
        created_at: time_col(row, "created_at", W, &ids)?,
    })
}

fn token_from_row(row: &DbRow) -> Result<JoinToken> {
    const W: &str = "join token";
    let id: Uuid = col(row, "id", W, "?")?;
    let ids = id.to_string();
    let tags: String = col(row, "tags", W, &ids)?;
    Ok(JoinToken {
        id: JoinTokenId(id),
        network_id: NetworkId(col(row, "network_id", W, &ids)?),
        description: text_col(row, "description", W, &ids, MAX_TEXT_LEN)?,
        max_uses: count(col(row, "max_uses", W, &ids)?, "max_uses", W, &ids)?,
        uses_left: count(col(row, "uses_left", W, &ids)?, "uses_left", W, &ids)?,
        expires_at: time_col(row, "expires_at", W, &ids)?,
        tags: Tags::from_json(&tags, W, &ids)?,
        auto_approve: col(row, "auto_approve", W, &ids)?,
        created_at: time_col(row, "created_at", W, &ids)?,
        created_by: text_col(row, "created_by", W, &ids, MAX_ACTOR_LEN)?,
    })
}

fn node_from_row(row: &DbRow) -> Result<Node> {
    const W: &str = "node";
    let node_id: String = col(row, "node_id", W, "?")?;
    let id = node_id.chars().take(64).collect::<String>();
    let spiffe_id: String = col(row, "spiffe_id", W, &id)?;
    let tags: String = col(row, "tags", W, &id)?;
    let serial: Option<Vec<u8>> = col(row, "svid_serial", W, &id)?;
    let not_after = opt_time_col(row, "svid_not_after", W, &id)?;
    let svid = match (serial, not_after) {
        (Some(serial), Some(not_after)) => Some(SvidRecord { serial, not_after }),
        (None, None) => None,
        _ => {
            return Err(StoreError::corrupt(
                W,
                &id,
                "svid_serial and svid_not_after must be both set or both empty",
            ));
        }
    };
    Ok(Node {
        node_id: node_id
            .parse()
            .map_err(|e| StoreError::corrupt(W, &id, e))?,
        network_id: NetworkId(col(row, "network_id", W, &id)?),
        spiffe_id: SpiffeId::parse(&spiffe_id).map_err(|e| StoreError::corrupt(W, &id, e))?,
        status: parse_col(row, "status", W, &id)?,
        tags: Tags::from_json(&tags, W, &id)?,
        enrolled_at: time_col(row, "enrolled_at", W, &id)?,
        status_changed_at: time_col(row, "status_changed_at", W, &id)?,
        join_token_id: col::<Option<Uuid>>(row, "join_token_id", W, &id)?.map(JoinTokenId),
        svid,
        last_seen: opt_time_col(row, "last_seen", W, &id)?,
    })
}

fn member_from_row(row: &DbRow) -> Result<Member> {
    const W: &str = "node";
    let node_id: String = col(row, "node_id", W, "?")?;
    let id = node_id.chars().take(64).collect::<String>();
    let keys = NodeKeys {
        signing: col(row, "signing_key", W, &id)?,
        kem: col(row, "kem_key", W, &id)?,
    };
    keys.check()
        .map_err(|e| StoreError::corrupt(W, &id, e.to_string()))?;
    let tags: String = col(row, "tags", W, &id)?;
    Ok(Member {
        node_id: node_id
            .parse()
            .map_err(|e| StoreError::corrupt(W, &id, e))?,
        member_since: time_col(row, "approved_at", W, &id)?,
        tags: Tags::from_json(&tags, W, &id)?,
        keys,
    })
}

fn revocation_from_row(row: &DbRow) -> Result<Revocation> {
    const W: &str = "revocation";
    let node_id: String = col(row, "node_id", W, "?")?;
    let id = node_id.chars().take(64).collect::<String>();
    let spiffe_id: String = col(row, "spiffe_id", W, &id)?;
    Ok(Revocation {
        network_id: NetworkId(col(row, "network_id", W, &id)?),
        node_id: node_id
            .parse()
            .map_err(|e| StoreError::corrupt(W, &id, e))?,
        spiffe_id: SpiffeId::parse(&spiffe_id).map_err(|e| StoreError::corrupt(W, &id, e))?,
        svid_serial: col(row, "svid_serial", W, &id)?,
        epoch: count(col(row, "epoch", W, &id)?, "epoch", W, &id)?,
        revoked_at: time_col(row, "revoked_at", W, &id)?,
        reason: text_col(row, "reason", W, &id, MAX_TEXT_LEN)?,
    })
}

fn api_token_from_row(row: &DbRow) -> Result<ApiToken> {
    const W: &str = "API token";
    let id: Uuid = col(row, "id", W, "?")?;
    let ids = id.to_string();
    Ok(ApiToken {
        id: ApiTokenId(id),
        name: text_col(row, "name", W, &ids, MAX_TEXT_LEN)?,
        role: parse_col::<Role>(row, "role", W, &ids)?,
        created_at: time_col(row, "created_at", W, &ids)?,
        created_by: text_col(row, "created_by", W, &ids, MAX_ACTOR_LEN)?,
        expires_at: opt_time_col(row, "expires_at", W, &ids)?,
        revoked_at: opt_time_col(row, "revoked_at", W, &ids)?,
        last_used_at: opt_time_col(row, "last_used_at", W, &ids)?,
    })
}

fn audit_from_row(row: &DbRow) -> Result<AuditRecord> {
    const W: &str = "audit record";
    let id: Uuid = col(row, "id", W, "?")?;
    let ids = id.to_string();
    Ok(AuditRecord {
        id: AuditId(id),
        at: time_col(row, "at", W, &ids)?,
        actor: text_col(row, "actor", W, &ids, MAX_ACTOR_LEN)?,
        action: text_col(row, "action", W, &ids, MAX_ACTION_LEN)?,
        target: col::<Option<String>>(row, "target", W, &ids)?,
        network_id: col::<Option<Uuid>>(row, "network_id", W, &ids)?.map(NetworkId),
        result: parse_col::<AuditResult>(row, "result", W, &ids)?,
        detail: text_col(row, "detail", W, &ids, MAX_DETAIL_LEN)?,
    })
}

fn heartbeat_from_row(row: &DbRow) -> Result<Heartbeat> {
    const W: &str = "heartbeat";
    let node_id: String = col(row, "node_id", W, "?")?;
    let id = node_id.chars().take(64).collect::<String>();
    Ok(Heartbeat {
        node_id: node_id
            .parse()
            .map_err(|e| StoreError::corrupt(W, &id, e))?,
        at: time_col(row, "at", W, &id)?,
        payload: text_col(row, "payload", W, &id, MAX_HEARTBEAT_LEN)?,
    })
}

fn policy_from_row(row: &DbRow) -> Result<Policy> {
    const W: &str = "policy";
    let network_id: Uuid = col(row, "network_id", W, "?")?;
    let id = network_id.to_string();
    Ok(Policy {
        network_id: NetworkId(network_id),
        version: count(col(row, "version", W, &id)?, "version", W, &id)?,
        document: text_col(row, "document", W, &id, MAX_POLICY_LEN)?,
        author: text_col(row, "author", W, &id, MAX_ACTOR_LEN)?,
        created_at: time_col(row, "created_at", W, &id)?,
    })
}

fn incident_summary_from_row(row: &DbRow) -> Result<IncidentSummary> {
    const W: &str = "incident";
    let id: Uuid = col(row, "id", W, "?")?;
    let ids = id.to_string();
    let token = |name: &'static str| -> Result<String> {
        let s = text_col(row, name, W, &ids, MAX_INCIDENT_TOKEN_LEN)?;
        check_token("x", &s).map_err(|_| {
            StoreError::corrupt(W, &ids, format!("column {name}: {s:?} is not a token"))
        })?;
        Ok(s)
    };
    let summary = IncidentSummary {
        id: IncidentId(id),
        network_id: col::<Option<Uuid>>(row, "network_id", W, &ids)?.map(NetworkId),
        kind: token("kind")?,
        status: parse_col(row, "status", W, &ids)?,
        severity: token("severity")?,
        target: text_col(row, "target", W, &ids, MAX_TARGET_LEN)?,
        opened_at: time_col(row, "opened_at", W, &ids)?,
        updated_at: time_col(row, "updated_at", W, &ids)?,
        resolved_at: opt_time_col(row, "resolved_at", W, &ids)?,
    };
    if (summary.status == IncidentStatus::Resolved) != summary.resolved_at.is_some() {
        return Err(StoreError::corrupt(
            W,
            &ids,
            "resolved_at must be set exactly when the status is resolved",
        ));
    }
    Ok(summary)
}

fn incident_action_from_row(row: &DbRow, ids: &str) -> Result<IncidentAction> {
    const W: &str = "incident";
    let action = text_col(row, "action", W, ids, MAX_INCIDENT_TOKEN_LEN)?;
    check_token("x", &action)
        .map_err(|_| StoreError::corrupt(W, ids, format!("action {action:?} is not a token")))?;
    Ok(IncidentAction {
        seq: count(col(row, "seq", W, ids)?, "seq", W, ids)?,
        action,
        target: text_col(row, "target", W, ids, MAX_TARGET_LEN)?,
        outcome: parse_col::<ActionOutcome>(row, "outcome", W, ids)?,
        started_at: time_col(row, "started_at", W, ids)?,
        finished_at: opt_time_col(row, "finished_at", W, ids)?,
    })
}

fn all<T>(rows: &[DbRow], f: fn(&DbRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

// ------------------------------------------------------------------ inputs

fn check_heartbeat(hb: &Heartbeat) -> Result<()> {
    if hb.payload.len() > MAX_HEARTBEAT_LEN {
        return Err(StoreError::invalid(
            "heartbeat payload",
            format!(
                "{} bytes; the limit is {MAX_HEARTBEAT_LEN}",
                hb.payload.len()
            ),
        ));
    }
    if !hb.payload.trim_start().starts_with('{') {
        return Err(StoreError::invalid(
            "heartbeat payload",
            "must be a JSON object",
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&hb.payload)
        .map_err(|e| StoreError::invalid("heartbeat payload", format!("not valid JSON: {e}")))?;
    Ok(())
}

fn check_action(action: &str) -> Result<()> {
    check_nonempty("audit action", action, MAX_ACTION_LEN)?;
    if !action
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(StoreError::invalid(
            "audit action",
            format!("{action:?}: only a-z, 0-9 and . _ - are allowed"),
        ));
    }
    Ok(())
}

/// Refuses a token (incident kind, severity, action) that is empty,
/// longer than [`MAX_INCIDENT_TOKEN_LEN`] or holds anything but
/// `a-z 0-9 _`.
fn check_token(what: &'static str, value: &str) -> Result<()> {
    check_nonempty(what, value, MAX_INCIDENT_TOKEN_LEN)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::invalid(
            what,
            format!("{value:?}: only a-z, 0-9 and _ are allowed"),
        ));
    }
    Ok(())
}

fn check_incident(i: &IncidentRecord) -> Result<()> {
    check_token("incident kind", &i.kind)?;
    check_token("incident severity", &i.severity)?;
    check_nonempty("incident target", &i.target, MAX_TARGET_LEN)?;
    if (i.status == IncidentStatus::Resolved) != i.resolved_at.is_some() {
        return Err(StoreError::invalid(
            "incident resolved_at",
            format!(
                "status is {} but resolved_at is {}; set it exactly when the status is resolved",
                i.status,
                if i.resolved_at.is_some() {
                    "set"
                } else {
                    "empty"
                }
            ),
        ));
    }
    if i.updated_at < i.opened_at {
        return Err(StoreError::invalid(
            "incident updated_at",
            "it must not be earlier than opened_at",
        ));
    }
    if i.document.len() > MAX_INCIDENT_DOCUMENT_LEN {
        return Err(StoreError::invalid(
            "incident document",
            format!(
                "{} bytes; the limit is {MAX_INCIDENT_DOCUMENT_LEN}",
                i.document.len()
            ),
        ));
    }
    if !i.document.trim_start().starts_with('{') {
        return Err(StoreError::invalid(
            "incident document",
            "must be a JSON object",
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&i.document)
        .map_err(|e| StoreError::invalid("incident document", format!("not valid JSON: {e}")))?;
    if i.actions.len() > MAX_INCIDENT_ACTIONS {
        return Err(StoreError::invalid(
            "incident actions",
            format!(
                "{} actions; the limit is {MAX_INCIDENT_ACTIONS}",
                i.actions.len()
            ),
        ));
    }
    let mut seqs = std::collections::BTreeSet::new();
    for a in &i.actions {
        check_token("incident action", &a.action)?;
        check_nonempty("incident action target", &a.target, MAX_TARGET_LEN)?;
        if !seqs.insert(a.seq) {
            return Err(StoreError::invalid(
                "incident action seq",
                format!("{} appears twice; each action needs its own", a.seq),
            ));
        }
        if (a.outcome == ActionOutcome::Pending) == a.finished_at.is_some() {
            return Err(StoreError::invalid(
                "incident action finished_at",
                format!(
                    "action {} is {} but finished_at is {}; set it exactly when the outcome is known",
                    a.seq,
                    a.outcome,
                    if a.finished_at.is_some() {
                        "set"
                    } else {
                        "empty"
                    }
                ),
            ));
        }
    }
    Ok(())
}

fn check_limit(limit: u32) -> Result<i64> {
    PageRequest::first(limit).checked_limit()
}

fn epoch_i64(epoch: u64) -> Result<i64> {
    i64::try_from(epoch)
        .map_err(|_| StoreError::invalid("revocation epoch", format!("{epoch} is out of range")))
}

fn uuid_cursor(cursor: &Cursor) -> Result<Uuid> {
    Uuid::try_parse(cursor.as_str()).map_err(|_| {
        StoreError::invalid(
            "cursor",
            "not a cursor this listing handed out; start it again",
        )
    })
}

fn bad_cursor() -> StoreError {
    StoreError::invalid(
        "cursor",
        "not a cursor this listing handed out; start it again",
    )
}

/// Fetches one `what` row by `sql` with a single id bound, or NotFound.
async fn fetch_by<'q, T, B>(
    pool: &sqlx::Pool<Db>,
    sql: &'q str,
    bind: B,
    what: &'static str,
    id: impl ToString,
    decode: fn(&DbRow) -> Result<T>,
    context: &'static str,
) -> Result<T>
where
    B: sqlx::Encode<'q, Db> + sqlx::Type<Db> + Send + 'q,
{
    let row = sqlx::query(sql)
        .bind(bind)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::db(context))?
        .ok_or_else(|| StoreError::not_found(what, id.to_string()))?;
    decode(&row)
}

// -------------------------------------------------------------- the store

impl Store for Backend {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(self.reader())
            .await
            .map_err(StoreError::db("ping the database"))?;
        Ok(())
    }

    async fn schema_version(&self) -> Result<i64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(self.reader())
        .await
        .map_err(StoreError::db("read the schema version"))
    }

    async fn close(&self) {
        self.writer().close().await;
        self.reader().close().await;
        self.close_background().await;
    }

    // ------------------------------------------------------------ networks

    async fn create_network(&self, n: NewNetwork, now: OffsetDateTime) -> Result<Network> {
        let pem = &n.ca_bundle_pem;
        if pem.is_empty() || pem.len() > MAX_CA_BUNDLE_LEN {
            return Err(StoreError::invalid(
                "CA bundle",
                format!("{} bytes; it must be 1 to {MAX_CA_BUNDLE_LEN}", pem.len()),
            ));
        }
        let key = n.ca_key.expose();
        if key.is_empty() || key.len() > MAX_CA_KEY_LEN {
            return Err(StoreError::invalid(
                "CA key",
                format!("{} bytes; it must be 1 to {MAX_CA_KEY_LEN}", key.len()),
            ));
        }
        let id = NetworkId::new();
        let sql = format!(
            "INSERT INTO networks (id, name, trust_domain, ca_bundle_pem, ca_key, revocation_epoch, created_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING {NETWORK_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(n.name.as_str())
            .bind(n.trust_domain.as_str())
            .bind(&n.ca_bundle_pem)
            .bind(key)
            .bind(to_micros(now))
            .fetch_one(self.writer())
            .await
            .map_err(StoreError::db("create a network"))
            .map_err(|e| {
                if e.is_unique_violation() {
                    StoreError::conflict(
                        "network",
                        &n.name,
                        format!(
                            "the name or trust domain {} is taken; pick another",
                            n.trust_domain
                        ),
                    )
                } else {
                    e
                }
            })?;
        network_from_row(&row)
    }

    async fn get_network(&self, id: NetworkId) -> Result<Network> {
        let sql = format!("SELECT {NETWORK_COLS} FROM networks WHERE id = $1");
        fetch_by(
            self.reader(),
            &sql,
            id.0,
            "network",
            id,
            network_from_row,
            "read a network",
        )
        .await
    }

    async fn get_network_by_name(&self, name: &NetworkName) -> Result<Network> {
        let sql = format!("SELECT {NETWORK_COLS} FROM networks WHERE name = $1");
        fetch_by(
            self.reader(),
            &sql,
            name.as_str(),
            "network",
            name.to_string(),
            network_from_row,
            "read a network",
        )
        .await
    }

    async fn list_networks(&self, page: PageRequest) -> Result<Page<Network>> {
        let limit = page.checked_limit()?;
        let after = match &page.after {
            Some(c) => NetworkName::new(c.as_str())
                .map_err(|_| bad_cursor())?
                .to_string(),
            None => String::new(),
        };
        let sql =
            format!("SELECT {NETWORK_COLS} FROM networks WHERE name > $1 ORDER BY name LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list networks"))?;
        Ok(Page::from_rows(all(&rows, network_from_row)?, limit, |n| {
            n.name.to_string()
        }))
    }

    async fn network_ca_key(&self, id: NetworkId) -> Result<SecretBytes> {
        let key: Vec<u8> = sqlx::query_scalar("SELECT ca_key FROM networks WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.reader())
            .await
            .map_err(StoreError::db("read a network's CA key"))?
            .ok_or_else(|| StoreError::not_found("network", id))?;
        Ok(SecretBytes::new(key))
    }

    // --------------------------------------------------------- join tokens

    async fn create_join_token(
        &self,
        t: NewJoinToken,
        now: OffsetDateTime,
    ) -> Result<(JoinToken, SecretToken)> {
        check_text("join token description", &t.description, MAX_TEXT_LEN)?;
        check_nonempty("join token creator", &t.created_by, MAX_ACTOR_LEN)?;
        if t.uses == 0 || t.uses > MAX_TOKEN_USES {
            return Err(StoreError::invalid(
                "join token uses",
                format!("{}; it must be 1 to {MAX_TOKEN_USES}", t.uses),
            ));
        }
        if t.expires_at <= now {
            return Err(StoreError::invalid(
                "join token expiry",
                "it must be later than now",
            ));
        }
        let id = JoinTokenId::new();
        let (secret, hashed) = secret::generate(TokenKind::Join, id.0)?;
        let mut tx = self.begin().await?;
        network_exists(&mut tx, t.network_id).await?;
        let sql = format!(
            "INSERT INTO join_tokens (id, network_id, salt, hash, description, max_uses, uses_left, \
             expires_at, tags, auto_approve, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11) RETURNING {TOKEN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(t.network_id.0)
            .bind(hashed.salt)
            .bind(hashed.hash)
            .bind(&t.description)
            .bind(i64::from(t.uses))
            .bind(to_micros(t.expires_at))
            .bind(t.tags.to_json())
            .bind(t.auto_approve)
            .bind(to_micros(now))
            .bind(&t.created_by)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("create a join token"))?;
        let token = token_from_row(&row)?;
        tx.commit()
            .await
            .map_err(StoreError::db("create a join token"))?;
        Ok((token, secret))
    }

    async fn get_join_token(&self, id: JoinTokenId) -> Result<JoinToken> {
        let sql = format!("SELECT {TOKEN_COLS} FROM join_tokens WHERE id = $1");
        fetch_by(
            self.reader(),
            &sql,
            id.0,
            "join token",
            id,
            token_from_row,
            "read a join token",
        )
        .await
    }

    async fn list_join_tokens(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> Result<Page<JoinToken>> {
        let limit = page.checked_limit()?;
        let after = page
            .after
            .as_ref()
            .map(uuid_cursor)
            .transpose()?
            .unwrap_or(Uuid::nil());
        let sql = format!(
            "SELECT {TOKEN_COLS} FROM join_tokens WHERE network_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(network_id.0)
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list join tokens"))?;
        Ok(Page::from_rows(all(&rows, token_from_row)?, limit, |t| {
            t.id.0.simple().to_string()
        }))
    }

    async fn delete_join_token(&self, id: JoinTokenId) -> Result<()> {
        let mut tx = self.begin().await?;
        // Cleared by hand as well as by ON DELETE SET NULL, so it does not
        // depend on foreign keys being enforced.
        sqlx::query("UPDATE nodes SET join_token_id = NULL WHERE join_token_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("delete a join token"))?;
        let done = sqlx::query("DELETE FROM join_tokens WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("delete a join token"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("join token", id));
        }
        tx.commit()
            .await
            .map_err(StoreError::db("delete a join token"))
    }

    // --------------------------------------------------------------- nodes

    async fn enroll_node(&self, token: &str, n: NewNode, now: OffsetDateTime) -> Result<Enrolled> {
        let presented = secret::parse(TokenKind::Join, token)?;
        if let Some(svid) = &n.svid {
            svid.check()?;
        }
        n.keys.check()?;
        let invalid = || StoreError::TokenInvalid {
            kind: TokenKind::Join.label(),
        };
        let token_id = presented.id;
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT t.salt, t.hash, t.expires_at, t.uses_left, n.trust_domain \
             FROM join_tokens t JOIN networks n ON n.id = t.network_id WHERE t.id = $1",
        )
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::db("read a join token"))?
        .ok_or_else(invalid)?;
        const W: &str = "join token";
        let ids = token_id.to_string();
        let salt: Vec<u8> = col(&row, "salt", W, &ids)?;
        let hash: Vec<u8> = col(&row, "hash", W, &ids)?;
        if !presented.matches(TokenKind::Join, &salt, &hash) {
            return Err(invalid());
        }
        let expires_at = time_col(&row, "expires_at", W, &ids)?;
        if expires_at <= now {
            return Err(StoreError::TokenExpired {
                kind: TokenKind::Join.label(),
                id: ids,
                expired_at: rfc3339(expires_at),
            });
        }
        let uses_left: i64 = col(&row, "uses_left", W, &ids)?;
        if uses_left <= 0 {
            return Err(StoreError::TokenExhausted { id: ids });
        }
        let trust_domain: String = col(&row, "trust_domain", "network", &ids)?;
        if n.spiffe_id.trust_domain_name() != trust_domain {
            return Err(StoreError::invalid(
                "SPIFFE ID",
                format!(
                    "{} is not in the network's trust domain {trust_domain}",
                    n.spiffe_id
                ),
            ));
        }
        // The conditional decrement is what makes concurrent redemptions
        // safe: on PostgreSQL a second transaction waits for the row lock
        // and re-checks `uses_left > 0` on the committed row; on SQLite
        // write transactions are serialized.
        let spent = sqlx::query(&format!(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0 \
             RETURNING {TOKEN_COLS}"
        ))
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::db("spend a join token use"))?;
        let Some(spent) = spent else {
            return Err(StoreError::TokenExhausted { id: ids });
        };
        let token = token_from_row(&spent)?;
        let taken: Option<String> =
            sqlx::query_scalar("SELECT node_id FROM nodes WHERE node_id = $1 OR spiffe_id = $2")
                .bind(n.node_id.to_string())
                .bind(n.spiffe_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::db("look up a node"))?;
        let already = || {
            StoreError::conflict(
                "node",
                n.node_id,
                format!(
                    "node id or SPIFFE ID {} is already enrolled; an identity enrolls once, so make a new one",
                    n.spiffe_id
                ),
            )
        };
        if taken.is_some() {
            return Err(already());
        }
        let status = if token.auto_approve {
            NodeStatus::Approved
        } else {
            NodeStatus::Pending
        };
        let svid = if status == NodeStatus::Approved {
            n.svid
        } else {
            None
        };
        let sql = format!(
            "INSERT INTO nodes (node_id, network_id, spiffe_id, status, tags, enrolled_at, \
             status_changed_at, join_token_id, svid_serial, svid_not_after, last_seen, \
             signing_key, kem_key, approved_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, NULL, $10, $11, $12) RETURNING {NODE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(n.node_id.to_string())
            .bind(token.network_id.0)
            .bind(n.spiffe_id.as_str())
            .bind(status.as_str())
            .bind(token.tags.to_json())
            .bind(to_micros(now))
            .bind(token_id)
            .bind(svid.as_ref().map(|s| s.serial.clone()))
            .bind(svid.as_ref().map(|s| to_micros(s.not_after)))
            .bind(n.keys.signing.clone())
            .bind(n.keys.kem.clone())
            .bind((status == NodeStatus::Approved).then(|| to_micros(now)))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("record an enrolled node"))
            .map_err(|e| {
                if e.is_unique_violation() {
                    already()
                } else {
                    e
                }
            })?;
        let node = node_from_row(&row)?;
        tx.commit().await.map_err(StoreError::db("enroll a node"))?;
        Ok(Enrolled { node, token })
    }

    async fn get_node(&self, node_id: &NodeId) -> Result<Node> {
        let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE node_id = $1");
        fetch_by(
            self.reader(),
            &sql,
            node_id.to_string(),
            "node",
            node_id.to_string(),
            node_from_row,
            "read a node",
        )
        .await
    }

    async fn get_nodes(&self, node_ids: &[NodeId]) -> Result<Vec<Node>> {
        if node_ids.len() > MAX_PAGE_SIZE as usize {
            return Err(StoreError::invalid(
                "node ids",
                format!("{}; at most {MAX_PAGE_SIZE} at once", node_ids.len()),
            ));
        }
        if node_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q =
            QueryBuilder::<Db>::new(format!("SELECT {NODE_COLS} FROM nodes WHERE node_id IN ("));
        let mut list = q.separated(", ");
        for id in node_ids {
            list.push_bind(id.to_string());
        }
        q.push(") ORDER BY node_id");
        let rows = q
            .build()
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("read nodes"))?;
        all(&rows, node_from_row)
    }

    async fn list_nodes(
        &self,
        network_id: NetworkId,
        filter: NodeFilter,
        page: PageRequest,
    ) -> Result<Page<Node>> {
        let limit = page.checked_limit()?;
        let after = match &page.after {
            Some(c) => c
                .as_str()
                .parse::<NodeId>()
                .map_err(|_| bad_cursor())?
                .to_string(),
            None => String::new(),
        };
        let mut q =
            QueryBuilder::<Db>::new(format!("SELECT {NODE_COLS} FROM nodes WHERE network_id = "));
        q.push_bind(network_id.0)
            .push(" AND node_id > ")
            .push_bind(after);
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(tag) = &filter.tag {
            // Validated tags hold no quote or %; `_` is escaped.
            let tag = Tags::new([tag])?;
            let tag = tag.iter().next().unwrap_or_default();
            q.push(" AND tags LIKE ")
                .push_bind(format!("%\"{}\"%", tag.replace('_', "\\_")))
                .push(" ESCAPE '\\'");
        }
        q.push(" ORDER BY node_id LIMIT ").push_bind(limit + 1);
        let rows = q
            .build()
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list nodes"))?;
        Ok(Page::from_rows(all(&rows, node_from_row)?, limit, |n| {
            n.node_id.to_string()
        }))
    }

    async fn approve_node(&self, node_id: &NodeId, now: OffsetDateTime) -> Result<Node> {
        let mut tx = self.begin().await?;
        let node = node_in_tx(&mut tx, node_id).await?;
        match node.status {
            NodeStatus::Approved => return Ok(node),
            NodeStatus::Revoked => {
                return Err(StoreError::NodeState {
                    node_id: node_id.to_string(),
                    status: node.status,
                    action: "be approved",
                });
            }
            NodeStatus::Pending => {}
        }
        let sql = format!(
            "UPDATE nodes SET status = 'approved', status_changed_at = $2, approved_at = $2 \
             WHERE node_id = $1 AND status = 'pending' RETURNING {NODE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(node_id.to_string())
            .bind(to_micros(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("approve a node"))?;
        let node = node_from_row(&row)?;
        tx.commit()
            .await
            .map_err(StoreError::db("approve a node"))?;
        Ok(node)
    }

    async fn set_node_tags(&self, node_id: &NodeId, tags: Tags) -> Result<Node> {
        let sql = format!("UPDATE nodes SET tags = $2 WHERE node_id = $1 RETURNING {NODE_COLS}");
        let row = sqlx::query(&sql)
            .bind(node_id.to_string())
            .bind(tags.to_json())
            .fetch_optional(self.writer())
            .await
            .map_err(StoreError::db("set a node's tags"))?
            .ok_or_else(|| StoreError::not_found("node", node_id))?;
        node_from_row(&row)
    }

    async fn record_svid(&self, node_id: &NodeId, svid: SvidRecord) -> Result<Node> {
        svid.check()?;
        let mut tx = self.begin().await?;
        let node = node_in_tx(&mut tx, node_id).await?;
        if node.status != NodeStatus::Approved {
            return Err(StoreError::NodeState {
                node_id: node_id.to_string(),
                status: node.status,
                action: "hold an SVID",
            });
        }
        let sql = format!(
            "UPDATE nodes SET svid_serial = $2, svid_not_after = $3 \
             WHERE node_id = $1 AND status = 'approved' RETURNING {NODE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(node_id.to_string())
            .bind(&svid.serial)
            .bind(to_micros(svid.not_after))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("record an SVID"))?;
        let node = node_from_row(&row)?;
        tx.commit()
            .await
            .map_err(StoreError::db("record an SVID"))?;
        Ok(node)
    }

    async fn revoke_node(
        &self,
        node_id: &NodeId,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Revocation> {
        check_text("revocation reason", reason, MAX_TEXT_LEN)?;
        let mut tx = self.begin().await?;
        // Marking the node first takes its row lock (PostgreSQL), so two
        // revocations of one node cannot both pass.
        let sql = format!(
            "UPDATE nodes SET status = 'revoked', status_changed_at = $2 \
             WHERE node_id = $1 AND status <> 'revoked' RETURNING {NODE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(node_id.to_string())
            .bind(to_micros(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::db("revoke a node"))?;
        let node = match row {
            Some(row) => node_from_row(&row)?,
            None => {
                let node = node_in_tx(&mut tx, node_id).await?;
                return Err(StoreError::NodeState {
                    node_id: node_id.to_string(),
                    status: node.status,
                    action: "be revoked again",
                });
            }
        };
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE networks SET revocation_epoch = revocation_epoch + 1 WHERE id = $1 \
             RETURNING revocation_epoch",
        )
        .bind(node.network_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::db("bump the revocation epoch"))?;
        let sql = format!(
            "INSERT INTO revocations ({REVOCATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {REVOCATION_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(node.network_id.0)
            .bind(epoch)
            .bind(node_id.to_string())
            .bind(node.spiffe_id.as_str())
            .bind(node.svid.as_ref().map(|s| s.serial.clone()))
            .bind(to_micros(now))
            .bind(reason)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("record a revocation"))?;
        let revocation = revocation_from_row(&row)?;
        tx.commit().await.map_err(StoreError::db("revoke a node"))?;
        Ok(revocation)
    }

    async fn list_revocations(
        &self,
        network_id: NetworkId,
        after_epoch: u64,
        limit: u32,
    ) -> Result<Vec<Revocation>> {
        let limit = check_limit(limit)?;
        let sql = format!(
            "SELECT {REVOCATION_COLS} FROM revocations WHERE network_id = $1 AND epoch > $2 \
             ORDER BY epoch LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(network_id.0)
            .bind(epoch_i64(after_epoch)?)
            .bind(limit)
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list revocations"))?;
        if rows.is_empty() {
            // Tell an unknown network from one with nothing (more) revoked.
            self.get_network(network_id).await?;
        }
        all(&rows, revocation_from_row)
    }

    async fn list_members(&self, network_id: NetworkId, page: PageRequest) -> Result<Page<Member>> {
        let limit = page.checked_limit()?;
        // The cursor is `<approved_at µs>.<node id>` of the last member seen.
        let (after_us, after_id) = match &page.after {
            Some(c) => {
                let (us, id) = c.as_str().split_once('.').ok_or_else(bad_cursor)?;
                let us: i64 = us.parse().map_err(|_| bad_cursor())?;
                let id: NodeId = id.parse().map_err(|_| bad_cursor())?;
                (us, id.to_string())
            }
            None => (i64::MIN, String::new()),
        };
        // Revoked nodes stay: the roster only grows (see schema 3).
        let rows = sqlx::query(
            "SELECT node_id, approved_at, tags, signing_key, kem_key FROM nodes \
             WHERE network_id = $1 AND approved_at IS NOT NULL \
             AND signing_key IS NOT NULL AND kem_key IS NOT NULL \
             AND (approved_at, node_id) > ($2, $3) \
             ORDER BY approved_at, node_id LIMIT $4",
        )
        .bind(network_id.0)
        .bind(after_us)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await
        .map_err(StoreError::db("list members"))?;
        Ok(Page::from_rows(all(&rows, member_from_row)?, limit, |m| {
            format!("{}.{}", to_micros(m.member_since), m.node_id)
        }))
    }

    async fn membership_stamp(&self, network_id: NetworkId) -> Result<MembershipStamp> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN approved_at IS NOT NULL AND signing_key IS NOT NULL \
             AND kem_key IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS members, \
             CAST(COALESCE(MAX(status_changed_at), 0) AS BIGINT) AS last_change \
             FROM nodes WHERE network_id = $1",
        )
        .bind(network_id.0)
        .fetch_one(self.reader())
        .await
        .map_err(StoreError::db("read the membership stamp"))?;
        let ids = network_id.to_string();
        let members: i64 = col(&row, "members", "network", &ids)?;
        Ok(MembershipStamp {
            members: count(members, "members", "network", &ids)?,
            last_change_us: col(&row, "last_change", "network", &ids)?,
        })
    }

    // ---------------------------------------------------------- API tokens

    async fn create_api_token(
        &self,
        t: NewApiToken,
        now: OffsetDateTime,
    ) -> Result<(ApiToken, SecretToken)> {
        let mut tx = self.begin().await?;
        let made = insert_api_token(&mut tx, t, now).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("create an API token"))?;
        Ok(made)
    }

    async fn bootstrap_admin_token(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(ApiToken, SecretToken)>> {
        let new = NewApiToken {
            name: name.to_owned(),
            role: Role::Admin,
            expires_at: None,
            created_by: "bootstrap".into(),
        };
        let mut tx = self.begin().await?;
        let first = sqlx::query(
            "INSERT INTO store_events (name, at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(FIRST_ADMIN_EVENT)
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("bootstrap the first admin token"))?;
        if first.rows_affected() == 0 {
            return Ok(None);
        }
        let made = insert_api_token(&mut tx, new, now).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("bootstrap the first admin token"))?;
        Ok(Some(made))
    }

    async fn authenticate_api_token(&self, token: &str, now: OffsetDateTime) -> Result<ApiToken> {
        let presented = secret::parse(TokenKind::Api, token)?;
        let invalid = || StoreError::TokenInvalid {
            kind: TokenKind::Api.label(),
        };
        let sql = format!("SELECT salt, hash, {API_COLS} FROM api_tokens WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(presented.id)
            .fetch_optional(self.reader())
            .await
            .map_err(StoreError::db("read an API token"))?
            .ok_or_else(invalid)?;
        let ids = presented.id.to_string();
        let salt: Vec<u8> = col(&row, "salt", "API token", &ids)?;
        let hash: Vec<u8> = col(&row, "hash", "API token", &ids)?;
        if !presented.matches(TokenKind::Api, &salt, &hash) {
            return Err(invalid());
        }
        let mut api = api_token_from_row(&row)?;
        if api.revoked_at.is_some() {
            return Err(StoreError::TokenRevoked { id: ids });
        }
        if let Some(expires_at) = api.expires_at
            && expires_at <= now
        {
            return Err(StoreError::TokenExpired {
                kind: TokenKind::Api.label(),
                id: ids,
                expired_at: rfc3339(expires_at),
            });
        }
        let now_us = to_micros(now);
        let stale = api
            .last_used_at
            .is_none_or(|t| to_micros(t) <= now_us - LAST_USED_GRANULARITY_US);
        if stale {
            sqlx::query(
                "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(presented.id)
            .bind(now_us)
            .execute(self.writer())
            .await
            .map_err(StoreError::db("record an API token's use"))?;
            api.last_used_at = Some(from_micros(now_us, "API token", &ids)?);
        }
        Ok(api)
    }

    async fn get_api_token(&self, id: ApiTokenId) -> Result<ApiToken> {
        let sql = format!("SELECT {API_COLS} FROM api_tokens WHERE id = $1");
        fetch_by(
            self.reader(),
            &sql,
            id.0,
            "API token",
            id,
            api_token_from_row,
            "read an API token",
        )
        .await
    }

    async fn list_api_tokens(&self, page: PageRequest) -> Result<Page<ApiToken>> {
        let limit = page.checked_limit()?;
        let after = page
            .after
            .as_ref()
            .map(uuid_cursor)
            .transpose()?
            .unwrap_or(Uuid::nil());
        let sql = format!("SELECT {API_COLS} FROM api_tokens WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list API tokens"))?;
        Ok(Page::from_rows(
            all(&rows, api_token_from_row)?,
            limit,
            |t| t.id.0.simple().to_string(),
        ))
    }

    async fn revoke_api_token(&self, id: ApiTokenId, now: OffsetDateTime) -> Result<ApiToken> {
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING {API_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(to_micros(now))
            .fetch_optional(self.writer())
            .await
            .map_err(StoreError::db("revoke an API token"))?
            .ok_or_else(|| StoreError::not_found("API token", id))?;
        api_token_from_row(&row)
    }

    // --------------------------------------------------------------- audit

    async fn append_audit(&self, r: NewAuditRecord) -> Result<AuditRecord> {
        check_nonempty("audit actor", &r.actor, MAX_ACTOR_LEN)?;
        check_action(&r.action)?;
        if let Some(target) = &r.target {
            check_text("audit target", target, MAX_TARGET_LEN)?;
        }
        if r.detail.len() > MAX_DETAIL_LEN {
            return Err(StoreError::invalid(
                "audit detail",
                format!("{} bytes; the limit is {MAX_DETAIL_LEN}", r.detail.len()),
            ));
        }
        let id = AuditId::new();
        let sql = format!(
            "INSERT INTO audit ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {AUDIT_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(to_micros(r.at))
            .bind(&r.actor)
            .bind(&r.action)
            .bind(r.target.as_deref())
            .bind(r.network_id.map(|n| n.0))
            .bind(r.result.as_str())
            .bind(&r.detail)
            .fetch_one(self.writer())
            .await
            .map_err(StoreError::db("append an audit record"))?;
        audit_from_row(&row)
    }

    async fn list_audit(&self, f: AuditFilter, page: PageRequest) -> Result<Page<AuditRecord>> {
        let limit = page.checked_limit()?;
        let mut q = QueryBuilder::<Db>::new(format!("SELECT {AUDIT_COLS} FROM audit WHERE 1 = 1"));
        if let Some(actor) = &f.actor {
            check_text("audit actor", actor, MAX_ACTOR_LEN)?;
            q.push(" AND actor = ").push_bind(actor.clone());
        }
        if let Some(action) = &f.action {
            check_text("audit action", action, MAX_ACTION_LEN)?;
            q.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(target) = &f.target {
            check_text("audit target", target, MAX_TARGET_LEN)?;
            q.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(network) = f.network_id {
            q.push(" AND network_id = ").push_bind(network.0);
        }
        if let Some(result) = f.result {
            q.push(" AND result = ").push_bind(result.as_str());
        }
        if let Some(since) = f.since {
            q.push(" AND at >= ").push_bind(to_micros(since));
        }
        if let Some(until) = f.until {
            q.push(" AND at < ").push_bind(to_micros(until));
        }
        if let Some(cursor) = &page.after {
            let (at, id) = cursor
                .as_str()
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, Uuid::try_parse(id).ok()?)))
                .ok_or_else(bad_cursor)?;
            q.push(" AND (at, id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows = q
            .build()
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list audit records"))?;
        Ok(Page::from_rows(all(&rows, audit_from_row)?, limit, |r| {
            format!("{}.{}", to_micros(r.at), r.id.0.simple())
        }))
    }

    async fn prune_audit(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(to_micros(before))
            .execute(self.writer())
            .await
            .map_err(StoreError::db("prune audit records"))?;
        Ok(done.rows_affected())
    }

    // ----------------------------------------------------------- telemetry

    async fn record_heartbeat(&self, hb: Heartbeat) -> Result<()> {
        self.record_heartbeats(std::slice::from_ref(&hb))
            .await?
            .pop()
            .unwrap_or(Ok(()))
    }

    async fn record_heartbeats(&self, batch: &[Heartbeat]) -> Result<Vec<Result<()>>> {
        if batch.len() > MAX_HEARTBEAT_BATCH {
            return Err(StoreError::invalid(
                "heartbeat batch",
                format!(
                    "{} heartbeats; the limit is {MAX_HEARTBEAT_BATCH}",
                    batch.len()
                ),
            ));
        }
        const DO: &str = "record heartbeats";
        let keep = self.config().heartbeat_history;
        let mut outcomes: Vec<Result<()>> = batch.iter().map(check_heartbeat).collect();
        let ids: Vec<String> = batch.iter().map(|hb| hb.node_id.to_string()).collect();
        let mut distinct: Vec<&str> = ids
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_ok())
            .map(|(id, _)| id.as_str())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return Ok(outcomes);
        }
        let mut tx = self.begin_heartbeats().await?;
        // One statement per step for the whole batch: the nodes' status,
        // the latest states (which `last_seen` is read from) and the
        // history rows; then one per node whose history is due for
        // pruning.
        let mut q = QueryBuilder::<Db>::new("SELECT node_id, status FROM nodes WHERE node_id IN (");
        let mut list = q.separated(", ");
        for id in &distinct {
            list.push_bind(*id);
        }
        q.push(")");
        let rows = q
            .build()
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db(DO))?;
        let mut status = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = col(row, "node_id", "node", "?")?;
            let st: String = col(row, "status", "node", &id)?;
            status.insert(id, st);
        }
        let mut accepted = Vec::with_capacity(batch.len());
        for (i, id) in ids.iter().enumerate() {
            if outcomes[i].is_err() {
                continue;
            }
            outcomes[i] = match status.get(id).map(|s| s.parse::<NodeStatus>()) {
                None => Err(StoreError::not_found("node", id)),
                Some(Err(e)) => Err(StoreError::corrupt("node", id, e)),
                Some(Ok(NodeStatus::Approved)) => {
                    accepted.push(i);
                    Ok(())
                }
                Some(Ok(other)) => Err(StoreError::NodeState {
                    node_id: id.clone(),
                    status: other,
                    action: "send heartbeats",
                }),
            };
        }
        if accepted.is_empty() {
            tx.commit().await.map_err(StoreError::db(DO))?;
            return Ok(outcomes);
        }
        // The newest heartbeat of each node (the later one on a tie): one
        // row per node, as an upsert may touch a row once.
        let mut newest: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for &i in &accepted {
            let slot = newest.entry(ids[i].as_str()).or_insert(i);
            if batch[i].at >= batch[*slot].at {
                *slot = i;
            }
        }
        let mut q =
            QueryBuilder::<Db>::new("INSERT INTO heartbeats_latest (node_id, at, payload) ");
        q.push_values(newest.values(), |mut row, &i| {
            row.push_bind(ids[i].as_str())
                .push_bind(to_micros(batch[i].at))
                .push_bind(batch[i].payload.as_str());
        });
        q.push(
            " ON CONFLICT (node_id) DO UPDATE SET at = excluded.at, payload = excluded.payload \
             WHERE heartbeats_latest.at <= excluded.at",
        );
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(DO))?;
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO heartbeat_history (node_id, node_key, at, payload) ",
        );
        q.push_values(&accepted, |mut row, &i| {
            row.push_bind(ids[i].as_str())
                .push_bind(history_key(&batch[i].node_id))
                .push_bind(to_micros(batch[i].at))
                .push_bind(batch[i].payload.as_str());
        });
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(DO))?;
        let due = self
            .unpruned()
            .add(accepted.iter().map(|&i| batch[i].node_id), keep);
        // Each due node's rows older than its newest `keep`: the cutoff and
        // the rows below it are both found on the (node_key, seq) index. A
        // window function over all of the due nodes' rows (the first way
        // this was written) numbered every row to delete a fifth of them.
        for id in &due {
            sqlx::query(
                "DELETE FROM heartbeat_history WHERE node_key = $1 AND seq < \
                 (SELECT seq FROM heartbeat_history WHERE node_key = $1 \
                 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            )
            .bind(history_key(id))
            .bind(i64::from(keep) - 1)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("prune heartbeat history"))?;
        }
        tx.commit().await.map_err(StoreError::db(DO))?;
        self.wrote_heartbeats();
        Ok(outcomes)
    }

    async fn latest_heartbeat(&self, node_id: &NodeId) -> Result<Option<Heartbeat>> {
        let row =
            sqlx::query("SELECT node_id, at, payload FROM heartbeats_latest WHERE node_id = $1")
                .bind(node_id.to_string())
                .fetch_optional(self.reader())
                .await
                .map_err(StoreError::db("read a heartbeat"))?;
        match row {
            Some(row) => Ok(Some(heartbeat_from_row(&row)?)),
            None => {
                self.get_node(node_id).await?;
                Ok(None)
            }
        }
    }

    async fn latest_heartbeats(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> Result<Page<Heartbeat>> {
        let limit = page.checked_limit()?;
        let after = match &page.after {
            Some(c) => c
                .as_str()
                .parse::<NodeId>()
                .map_err(|_| bad_cursor())?
                .to_string(),
            None => String::new(),
        };
        let rows = sqlx::query(
            "SELECT h.node_id, h.at, h.payload FROM heartbeats_latest h \
             JOIN nodes n ON n.node_id = h.node_id \
             WHERE n.network_id = $1 AND h.node_id > $2 ORDER BY h.node_id LIMIT $3",
        )
        .bind(network_id.0)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await
        .map_err(StoreError::db("list heartbeats"))?;
        Ok(Page::from_rows(
            all(&rows, heartbeat_from_row)?,
            limit,
            |h| h.node_id.to_string(),
        ))
    }

    async fn heartbeat_history(&self, node_id: &NodeId, limit: u32) -> Result<Vec<Heartbeat>> {
        // Pruning runs in bulk, so up to a quarter more rows than the
        // bound may be stored for a while; the newest `keep` are the history.
        let limit = check_limit(limit)?.min(i64::from(self.config().heartbeat_history));
        let rows = sqlx::query(
            "SELECT node_id, at, payload FROM heartbeat_history \
             WHERE node_key = $1 AND node_id = $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(history_key(node_id))
        .bind(node_id.to_string())
        .bind(limit)
        .fetch_all(self.reader())
        .await
        .map_err(StoreError::db("read heartbeat history"))?;
        if rows.is_empty() {
            self.get_node(node_id).await?;
        }
        all(&rows, heartbeat_from_row)
    }

    // ------------------------------------------------------------ policies

    async fn put_policy(&self, p: NewPolicy, now: OffsetDateTime) -> Result<Policy> {
        if p.document.len() > MAX_POLICY_LEN {
            return Err(StoreError::invalid(
                "policy document",
                format!("{} bytes; the limit is {MAX_POLICY_LEN}", p.document.len()),
            ));
        }
        if p.document.is_empty() {
            return Err(StoreError::invalid("policy document", "must not be empty"));
        }
        check_nonempty("policy author", &p.author, MAX_ACTOR_LEN)?;
        let mut tx = self.begin().await?;
        network_exists(&mut tx, p.network_id).await?;
        let latest: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM policies WHERE network_id = $1",
        )
        .bind(p.network_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::db("read the latest policy version"))?;
        if let Some(base) = p.base_version
            && i64::from(base) != latest
        {
            return Err(StoreError::conflict(
                "policy of network",
                p.network_id,
                format!(
                    "the edit is based on version {base} but the latest is {latest}; reload it and apply the edit again"
                ),
            ));
        }
        let sql = "INSERT INTO policies (network_id, version, document, author, created_at) \
                   VALUES ($1, $2, $3, $4, $5) \
                   RETURNING network_id, version, document, author, created_at";
        let row = sqlx::query(sql)
            .bind(p.network_id.0)
            .bind(latest + 1)
            .bind(&p.document)
            .bind(&p.author)
            .bind(to_micros(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("store a policy"))
            .map_err(|e| {
                if e.is_unique_violation() {
                    StoreError::conflict(
                        "policy of network",
                        p.network_id,
                        format!(
                            "version {} was stored by another change first; reload and retry",
                            latest + 1
                        ),
                    )
                } else {
                    e
                }
            })?;
        let policy = policy_from_row(&row)?;
        tx.commit()
            .await
            .map_err(StoreError::db("store a policy"))?;
        Ok(policy)
    }

    async fn get_policy(&self, network_id: NetworkId, version: Option<u32>) -> Result<Policy> {
        let row = match version {
            Some(v) => sqlx::query(
                "SELECT network_id, version, document, author, created_at FROM policies \
                 WHERE network_id = $1 AND version = $2",
            )
            .bind(network_id.0)
            .bind(i64::from(v)),
            None => sqlx::query(
                "SELECT network_id, version, document, author, created_at FROM policies \
                 WHERE network_id = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(network_id.0),
        }
        .fetch_optional(self.reader())
        .await
        .map_err(StoreError::db("read a policy"))?;
        match row {
            Some(row) => policy_from_row(&row),
            None => {
                self.get_network(network_id).await?;
                Err(StoreError::not_found(
                    "policy",
                    match version {
                        Some(v) => format!("version {v} of network {network_id}"),
                        None => format!("of network {network_id} (none stored yet)"),
                    },
                ))
            }
        }
    }

    async fn list_policies(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> Result<Page<PolicySummary>> {
        let limit = page.checked_limit()?;
        let before = match &page.after {
            Some(c) => c.as_str().parse::<u32>().map_err(|_| bad_cursor())?,
            None => u32::MAX,
        };
        let rows = sqlx::query(
            "SELECT version, author, created_at, CAST(LENGTH(document) AS BIGINT) AS size FROM policies \
             WHERE network_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
        )
        .bind(network_id.0)
        .bind(i64::from(before))
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await
        .map_err(StoreError::db("list policies"))?;
        let id = network_id.to_string();
        let items = rows
            .iter()
            .map(|row| {
                const W: &str = "policy";
                Ok(PolicySummary {
                    version: count(col(row, "version", W, &id)?, "version", W, &id)?,
                    author: text_col(row, "author", W, &id, MAX_ACTOR_LEN)?,
                    created_at: time_col(row, "created_at", W, &id)?,
                    size: count(col(row, "size", W, &id)?, "size", W, &id)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            self.get_network(network_id).await?;
        }
        Ok(Page::from_rows(items, limit, |p| p.version.to_string()))
    }

    // ----------------------------------------------------------- incidents

    async fn put_incident(&self, i: IncidentRecord) -> Result<bool> {
        check_incident(&i)?;
        let mut tx = self.begin().await?;
        if let Some(network_id) = i.network_id {
            network_exists(&mut tx, network_id).await?;
        }
        let done = sqlx::query(
            "INSERT INTO incidents (id, network_id, kind, status, severity, target, opened_at, \
             updated_at, resolved_at, document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET network_id = excluded.network_id, \
             kind = excluded.kind, status = excluded.status, severity = excluded.severity, \
             target = excluded.target, opened_at = excluded.opened_at, \
             updated_at = excluded.updated_at, resolved_at = excluded.resolved_at, \
             document = excluded.document \
             WHERE incidents.updated_at <= excluded.updated_at",
        )
        .bind(i.id.0)
        .bind(i.network_id.map(|n| n.0))
        .bind(&i.kind)
        .bind(i.status.as_str())
        .bind(&i.severity)
        .bind(&i.target)
        .bind(to_micros(i.opened_at))
        .bind(to_micros(i.updated_at))
        .bind(i.resolved_at.map(to_micros))
        .bind(&i.document)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("store an incident"))?;
        if done.rows_affected() == 0 {
            // A newer version is stored; leave it (and its actions) alone.
            return Ok(false);
        }
        sqlx::query("DELETE FROM incident_actions WHERE incident_id = $1")
            .bind(i.id.0)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("store an incident's actions"))?;
        if !i.actions.is_empty() {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO incident_actions (incident_id, seq, kind, action, target, outcome, \
                 started_at, finished_at) ",
            );
            q.push_values(&i.actions, |mut b, a| {
                b.push_bind(i.id.0)
                    .push_bind(i64::from(a.seq))
                    .push_bind(&i.kind)
                    .push_bind(&a.action)
                    .push_bind(&a.target)
                    .push_bind(a.outcome.as_str())
                    .push_bind(to_micros(a.started_at))
                    .push_bind(a.finished_at.map(to_micros));
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db("store an incident's actions"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("store an incident"))?;
        Ok(true)
    }

    async fn get_incident(&self, id: IncidentId) -> Result<IncidentRecord> {
        let sql = format!("SELECT {INCIDENT_COLS}, document FROM incidents WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.0)
            .fetch_optional(self.reader())
            .await
            .map_err(StoreError::db("read an incident"))?
            .ok_or_else(|| StoreError::not_found("incident", id))?;
        let summary = incident_summary_from_row(&row)?;
        let ids = id.to_string();
        let document = text_col(
            &row,
            "document",
            "incident",
            &ids,
            MAX_INCIDENT_DOCUMENT_LEN,
        )?;
        let sql = format!(
            "SELECT {INCIDENT_ACTION_COLS} FROM incident_actions WHERE incident_id = $1 \
             ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(id.0)
            .bind(MAX_INCIDENT_ACTIONS as i64 + 1)
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("read an incident's actions"))?;
        if rows.len() > MAX_INCIDENT_ACTIONS {
            return Err(StoreError::corrupt(
                "incident",
                &ids,
                format!("more than {MAX_INCIDENT_ACTIONS} actions"),
            ));
        }
        let actions = rows
            .iter()
            .map(|r| incident_action_from_row(r, &ids))
            .collect::<Result<Vec<_>>>()?;
        Ok(IncidentRecord {
            id: summary.id,
            network_id: summary.network_id,
            kind: summary.kind,
            status: summary.status,
            severity: summary.severity,
            target: summary.target,
            opened_at: summary.opened_at,
            updated_at: summary.updated_at,
            resolved_at: summary.resolved_at,
            document,
            actions,
        })
    }

    async fn list_incidents(
        &self,
        f: IncidentFilter,
        page: PageRequest,
    ) -> Result<Page<IncidentSummary>> {
        let limit = page.checked_limit()?;
        if let Some(kind) = &f.kind {
            check_token("incident kind", kind)?;
        }
        let mut q =
            QueryBuilder::<Db>::new(format!("SELECT {INCIDENT_COLS} FROM incidents WHERE 1 = 1"));
        if let Some(status) = f.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if f.unresolved {
            q.push(" AND status <> 'resolved'");
        }
        if let Some(kind) = f.kind {
            q.push(" AND kind = ").push_bind(kind);
        }
        if let Some(network_id) = f.network_id {
            q.push(" AND network_id = ").push_bind(network_id.0);
        }
        if let Some(cursor) = &page.after {
            let (at, id) = cursor
                .as_str()
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, Uuid::try_parse(id).ok()?)))
                .ok_or_else(bad_cursor)?;
            q.push(" AND (opened_at, id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY opened_at DESC, id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows = q
            .build()
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("list incidents"))?;
        Ok(Page::from_rows(
            all(&rows, incident_summary_from_row)?,
            limit,
            |i| format!("{}.{}", to_micros(i.opened_at), i.id.0.simple()),
        ))
    }

    async fn action_stats(&self, incident_kind: Option<&str>) -> Result<Vec<ActionStats>> {
        if let Some(kind) = incident_kind {
            check_token("incident kind", kind)?;
        }
        let mut q = QueryBuilder::<Db>::new(
            "SELECT kind, action, \
             CAST(SUM(CASE WHEN outcome = 'succeeded' THEN 1 ELSE 0 END) AS BIGINT) AS succeeded, \
             CAST(SUM(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed \
             FROM incident_actions WHERE outcome <> 'pending'",
        );
        if let Some(kind) = incident_kind {
            q.push(" AND kind = ").push_bind(kind.to_owned());
        }
        q.push(" GROUP BY kind, action ORDER BY kind, action LIMIT ")
            .push_bind(MAX_ACTION_STATS as i64);
        let rows = q
            .build()
            .fetch_all(self.reader())
            .await
            .map_err(StoreError::db("read action statistics"))?;
        rows.iter()
            .map(|row| {
                const W: &str = "action statistics";
                let kind = text_col(row, "kind", W, "?", MAX_INCIDENT_TOKEN_LEN)?;
                let action = text_col(row, "action", W, &kind, MAX_INCIDENT_TOKEN_LEN)?;
                Ok(ActionStats {
                    succeeded: count(col(row, "succeeded", W, &kind)?, "succeeded", W, &kind)?,
                    failed: count(col(row, "failed", W, &kind)?, "failed", W, &kind)?,
                    incident_kind: kind,
                    action,
                })
            })
            .collect()
    }

    async fn prune_incidents(&self, before: OffsetDateTime) -> Result<u64> {
        let mut tx = self.begin().await?;
        // The actions go first, so this does not rely on the cascade.
        sqlx::query(
            "DELETE FROM incident_actions WHERE incident_id IN \
             (SELECT id FROM incidents WHERE status = 'resolved' AND resolved_at < $1)",
        )
        .bind(to_micros(before))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("prune incidents"))?;
        let done =
            sqlx::query("DELETE FROM incidents WHERE status = 'resolved' AND resolved_at < $1")
                .bind(to_micros(before))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db("prune incidents"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("prune incidents"))?;
        Ok(done.rows_affected())
    }
}

// ----------------------------------------------------------------- helpers

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

async fn network_exists(tx: &mut sqlx::Transaction<'static, Db>, id: NetworkId) -> Result<()> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM networks WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::db("look up a network"))?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::not_found("network", id))
}

async fn node_in_tx(tx: &mut sqlx::Transaction<'static, Db>, node_id: &NodeId) -> Result<Node> {
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE node_id = $1");
    let row = sqlx::query(&sql)
        .bind(node_id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::db("read a node"))?
        .ok_or_else(|| StoreError::not_found("node", node_id))?;
    node_from_row(&row)
}

async fn insert_api_token(
    tx: &mut sqlx::Transaction<'static, Db>,
    t: NewApiToken,
    now: OffsetDateTime,
) -> Result<(ApiToken, SecretToken)> {
    check_nonempty("API token name", &t.name, MAX_TEXT_LEN)?;
    check_nonempty("API token creator", &t.created_by, MAX_ACTOR_LEN)?;
    if let Some(expires_at) = t.expires_at
        && expires_at <= now
    {
        return Err(StoreError::invalid(
            "API token expiry",
            "it must be later than now",
        ));
    }
    let id = ApiTokenId::new();
    let (secret, hashed) = secret::generate(TokenKind::Api, id.0)?;
    let sql = format!(
        "INSERT INTO api_tokens (id, name, role, salt, hash, created_at, created_by, expires_at, \
         revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL) \
         RETURNING {API_COLS}"
    );
    let row = sqlx::query(&sql)
        .bind(id.0)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(hashed.salt)
        .bind(hashed.hash)
        .bind(to_micros(now))
        .bind(&t.created_by)
        .bind(t.expires_at.map(to_micros))
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::db("create an API token"))?;
    Ok((api_token_from_row(&row)?, secret))
}
