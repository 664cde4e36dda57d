//! The store trait that both backends implement.
//!
//! The store never reads the clock: every method whose outcome depends on
//! the time takes `now` (or the record's own time), so the caller decides
//! and tests control it. Methods that create or change records validate
//! every input against [`crate::limits`] first.
//!
//! The trait uses `impl Future + Send` returns so implementations can be
//! written with `async fn` and driven from any tokio task; a store is
//! cheap to clone (it holds connection pools) and shared by all handlers.

use std::future::Future;

use time::OffsetDateTime;
use weft_crypto::NodeId;

use crate::error::Result;
use crate::model::{
    ActionStats, ApiToken, ApiTokenId, AuditFilter, AuditRecord, Enrolled, Heartbeat,
    IncidentFilter, IncidentId, IncidentRecord, IncidentSummary, JoinToken, JoinTokenId, Member,
    MembershipStamp, Network, NetworkId, NetworkName, NewApiToken, NewAuditRecord, NewJoinToken,
    NewNetwork, NewNode, NewPolicy, Node, NodeFilter, Page, PageRequest, Policy, PolicySummary,
    Revocation, SecretBytes, SecretToken, SvidRecord, Tags,
};

/// The control plane's persistence.
pub trait Store: Clone + Send + Sync + 'static {
    // ------------------------------------------------------------- health

    /// Checks that the database answers (for `/ready`).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    /// The schema version the database is at (the newest migration
    /// applied); [`crate::SCHEMA_VERSION`] after a successful open.
    fn schema_version(&self) -> impl Future<Output = Result<i64>> + Send;

    /// Closes the connections, waiting for those in use to be returned.
    fn close(&self) -> impl Future<Output = ()> + Send;

    // ----------------------------------------------------------- networks

    /// Creates a network; a taken name or trust domain is a conflict.
    fn create_network(
        &self,
        network: NewNetwork,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Network>> + Send;

    /// A network by id.
    fn get_network(&self, id: NetworkId) -> impl Future<Output = Result<Network>> + Send;

    /// A network by name.
    fn get_network_by_name(
        &self,
        name: &NetworkName,
    ) -> impl Future<Output = Result<Network>> + Send;

    /// Networks in name order.
    fn list_networks(
        &self,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<Network>>> + Send;

    /// The network's CA key blob, exactly as given at creation.
    fn network_ca_key(&self, id: NetworkId) -> impl Future<Output = Result<SecretBytes>> + Send;

    // -------------------------------------------------------- join tokens

    /// Creates a join token; returns it and its secret text, which is not
    /// stored and cannot be shown again.
    fn create_join_token(
        &self,
        token: NewJoinToken,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(JoinToken, SecretToken)>> + Send;

    /// A join token by id.
    fn get_join_token(&self, id: JoinTokenId) -> impl Future<Output = Result<JoinToken>> + Send;

    /// A network's join tokens, oldest first (spent and expired ones too).
    fn list_join_tokens(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<JoinToken>>> + Send;

    /// Deletes a join token; it can enroll no more nodes. Nodes it enrolled
    /// stay, their `join_token_id` cleared.
    fn delete_join_token(&self, id: JoinTokenId) -> impl Future<Output = Result<()>> + Send;

    // -------------------------------------------------------------- nodes

    /// Enrolls a node with a join token, atomically: the token is checked
    /// (secret, expiry, uses left), one use is spent, and the node is
    /// recorded approved (with `node.svid`) or pending, with the token's
    /// tags. If anything fails nothing changes, the use included, and
    /// concurrent enrollments never spend more uses than the token has.
    ///
    /// Errors: [`TokenInvalid`](crate::StoreError::TokenInvalid),
    /// [`TokenExpired`](crate::StoreError::TokenExpired),
    /// [`TokenExhausted`](crate::StoreError::TokenExhausted); a node id or
    /// SPIFFE ID already enrolled is a conflict; a SPIFFE ID outside the
    /// network's trust domain is invalid input.
    fn enroll_node(
        &self,
        token: &str,
        node: NewNode,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Enrolled>> + Send;

    /// A node by id.
    fn get_node(&self, node_id: &NodeId) -> impl Future<Output = Result<Node>> + Send;

    /// The nodes among `node_ids` (at most
    /// [`MAX_PAGE_SIZE`](crate::limits::MAX_PAGE_SIZE)) that exist, in
    /// node-id order; ids of no node are left out. One query for many
    /// lookups.
    fn get_nodes(&self, node_ids: &[NodeId]) -> impl Future<Output = Result<Vec<Node>>> + Send;

    /// A network's nodes in node-id order.
    fn list_nodes(
        &self,
        network_id: NetworkId,
        filter: NodeFilter,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<Node>>> + Send;

    /// Approves a pending node (an approved one is returned unchanged; a
    /// revoked one cannot be approved).
    fn approve_node(
        &self,
        node_id: &NodeId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Replaces a node's tags.
    fn set_node_tags(
        &self,
        node_id: &NodeId,
        tags: Tags,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Records a newly issued (renewed) SVID; only an approved node may
    /// hold one, so a revoked or pending node is refused.
    fn record_svid(
        &self,
        node_id: &NodeId,
        svid: SvidRecord,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Revokes a node and bumps its network's revocation epoch in one
    /// transaction; returns the new revocation-list entry. Revoking a
    /// revoked node is a conflict (the epoch does not move).
    fn revoke_node(
        &self,
        node_id: &NodeId,
        reason: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Revocation>> + Send;

    /// The network's revocation entries with an epoch above `after_epoch`,
    /// in epoch order, at most `limit` (1 to
    /// [`MAX_PAGE_SIZE`](crate::limits::MAX_PAGE_SIZE)); page by passing
    /// the last epoch seen. `after_epoch = 0` starts from the first.
    fn list_revocations(
        &self,
        network_id: NetworkId,
        after_epoch: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Revocation>>> + Send;

    /// A network's members (approved nodes with their public keys on
    /// record) in enrollment order (`enrolled_at`, then node id): the
    /// nodes of its network file.
    fn list_members(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<Member>>> + Send;

    /// The network's [`MembershipStamp`]: one aggregate query that
    /// changes whenever [`Store::list_members`] would answer differently.
    fn membership_stamp(
        &self,
        network_id: NetworkId,
    ) -> impl Future<Output = Result<MembershipStamp>> + Send;

    // --------------------------------------------------------- API tokens

    /// Creates an API token; returns it and its secret text, which is not
    /// stored and cannot be shown again.
    fn create_api_token(
        &self,
        token: NewApiToken,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(ApiToken, SecretToken)>> + Send;

    /// Creates the first admin token if and only if no earlier call did
    /// (on this database, across processes); `None` afterwards.
    fn bootstrap_admin_token(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<(ApiToken, SecretToken)>>> + Send;

    /// The token a presented secret belongs to, if it is valid now
    /// (refused: invalid, expired, revoked). Records the use at most once
    /// a minute.
    fn authenticate_api_token(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<ApiToken>> + Send;

    /// An API token by id.
    fn get_api_token(&self, id: ApiTokenId) -> impl Future<Output = Result<ApiToken>> + Send;

    /// API tokens, oldest first (revoked ones too).
    fn list_api_tokens(
        &self,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<ApiToken>>> + Send;

    /// Revokes an API token (revoking it again changes nothing).
    fn revoke_api_token(
        &self,
        id: ApiTokenId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<ApiToken>> + Send;

    // -------------------------------------------------------------- audit

    /// Appends an audit record.
    fn append_audit(
        &self,
        record: NewAuditRecord,
    ) -> impl Future<Output = Result<AuditRecord>> + Send;

    /// Audit records matching `filter`, newest first.
    fn list_audit(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<AuditRecord>>> + Send;

    /// Deletes audit records older than `before`; returns how many.
    fn prune_audit(&self, before: OffsetDateTime) -> impl Future<Output = Result<u64>> + Send;

    // ---------------------------------------------------------- telemetry

    /// Records a heartbeat: the node's latest state (unless a later one is
    /// already stored), its history (the newest
    /// [`StoreConfig::heartbeat_history`](crate::StoreConfig) kept, older
    /// ones pruned) and its `last_seen`.
    fn record_heartbeat(&self, heartbeat: Heartbeat) -> impl Future<Output = Result<()>> + Send;

    /// Records up to
    /// [`MAX_HEARTBEAT_BATCH`](crate::limits::MAX_HEARTBEAT_BATCH)
    /// heartbeats in one transaction (one commit instead of one per
    /// heartbeat: what a busy control plane should use, collecting for a
    /// few milliseconds). Returns one outcome per heartbeat, in order: a
    /// refused heartbeat (bad payload, unknown or unapproved node) changes
    /// nothing and the others are still recorded; a database failure
    /// records none and is the error of the whole call.
    fn record_heartbeats(
        &self,
        batch: &[Heartbeat],
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;

    /// A node's latest heartbeat, if it sent one.
    fn latest_heartbeat(
        &self,
        node_id: &NodeId,
    ) -> impl Future<Output = Result<Option<Heartbeat>>> + Send;

    /// The latest heartbeat of each node of a network that sent one, in
    /// node-id order.
    fn latest_heartbeats(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<Heartbeat>>> + Send;

    /// A node's kept heartbeats, newest (last received) first, at most
    /// `limit` (1 to [`MAX_PAGE_SIZE`](crate::limits::MAX_PAGE_SIZE)).
    fn heartbeat_history(
        &self,
        node_id: &NodeId,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Heartbeat>>> + Send;

    // ----------------------------------------------------------- policies

    /// Stores a policy document as the network's next version.
    fn put_policy(
        &self,
        policy: NewPolicy,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Policy>> + Send;

    /// A policy version, or the latest with `None`.
    fn get_policy(
        &self,
        network_id: NetworkId,
        version: Option<u32>,
    ) -> impl Future<Output = Result<Policy>> + Send;

    /// A network's policy versions, newest first, without documents.
    fn list_policies(
        &self,
        network_id: NetworkId,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<PolicySummary>>> + Send;

    // ---------------------------------------------------------- incidents

    /// Stores an incident of the self-healing loop: creates it, or replaces
    /// the stored one (its fields, document and actions) in one
    /// transaction. A write whose `updated_at` is older than the stored
    /// one's changes nothing and returns `false` (a delayed writer never
    /// rolls an incident back); otherwise `true`.
    fn put_incident(&self, incident: IncidentRecord) -> impl Future<Output = Result<bool>> + Send;

    /// An incident by id, with its document and actions.
    fn get_incident(&self, id: IncidentId) -> impl Future<Output = Result<IncidentRecord>> + Send;

    /// Incidents matching `filter`, most recently opened first, without
    /// documents and actions.
    fn list_incidents(
        &self,
        filter: IncidentFilter,
        page: PageRequest,
    ) -> impl Future<Output = Result<Page<IncidentSummary>>> + Send;

    /// For each (incident kind, action) pair, how often the action
    /// succeeded and failed, over the stored incidents (pending actions
    /// are not counted); only `incident_kind` if given. In kind, then
    /// action order; at most [`MAX_ACTION_STATS`](crate::limits::MAX_ACTION_STATS)
    /// pairs.
    fn action_stats(
        &self,
        incident_kind: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ActionStats>>> + Send;

    /// Deletes resolved incidents resolved before `before`, with their
    /// actions; returns how many incidents. Open and escalated ones stay.
    fn prune_incidents(&self, before: OffsetDateTime) -> impl Future<Output = Result<u64>> + Send;
}
