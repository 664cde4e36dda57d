-- weft-store schema 1 (SQLite). Times are microseconds since the Unix
-- epoch, UTC. Ids are UUIDv7 as 16-byte blobs.

CREATE TABLE networks (
    id               BLOB PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL UNIQUE,
    trust_domain     TEXT NOT NULL UNIQUE,
    ca_bundle_pem    TEXT NOT NULL,
    ca_key           BLOB NOT NULL,
    revocation_epoch INTEGER NOT NULL DEFAULT 0 CHECK (revocation_epoch >= 0),
    created_at       INTEGER NOT NULL
) STRICT;

CREATE TABLE join_tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    network_id   BLOB NOT NULL REFERENCES networks (id),
    salt         BLOB NOT NULL,
    hash         BLOB NOT NULL,
    description  TEXT NOT NULL,
    max_uses     INTEGER NOT NULL CHECK (max_uses > 0),
    uses_left    INTEGER NOT NULL CHECK (uses_left >= 0 AND uses_left <= max_uses),
    expires_at   INTEGER NOT NULL,
    tags         TEXT NOT NULL,
    auto_approve INTEGER NOT NULL CHECK (auto_approve IN (0, 1)),
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL
) STRICT;
CREATE INDEX join_tokens_network ON join_tokens (network_id, id);

CREATE TABLE nodes (
    node_id           TEXT PRIMARY KEY NOT NULL,
    network_id        BLOB NOT NULL REFERENCES networks (id),
    spiffe_id         TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')),
    tags              TEXT NOT NULL,
    enrolled_at       INTEGER NOT NULL,
    status_changed_at INTEGER NOT NULL,
    join_token_id     BLOB REFERENCES join_tokens (id) ON DELETE SET NULL,
    svid_serial       BLOB,
    svid_not_after    INTEGER,
    last_seen         INTEGER
) STRICT;
CREATE INDEX nodes_network ON nodes (network_id, node_id);
CREATE INDEX nodes_join_token ON nodes (join_token_id);

CREATE TABLE revocations (
    network_id  BLOB NOT NULL REFERENCES networks (id),
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    node_id     TEXT NOT NULL UNIQUE REFERENCES nodes (node_id),
    spiffe_id   TEXT NOT NULL,
    svid_serial BLOB,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (network_id, epoch)
) STRICT;

CREATE TABLE api_tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    salt         BLOB NOT NULL,
    hash         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
) STRICT;

-- One row per one-time event (the first admin token).
CREATE TABLE store_events (
    name TEXT PRIMARY KEY NOT NULL,
    at   INTEGER NOT NULL
) STRICT;

CREATE TABLE audit (
    id         BLOB PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    network_id BLOB,
    result     TEXT NOT NULL CHECK (result IN ('success', 'denied', 'failed')),
    detail     TEXT NOT NULL
) STRICT;
CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_actor ON audit (actor, at);
CREATE INDEX audit_action ON audit (action, at);

CREATE TABLE heartbeats_latest (
    node_id TEXT PRIMARY KEY NOT NULL REFERENCES nodes (node_id),
    at      INTEGER NOT NULL,
    payload TEXT NOT NULL
) STRICT;

CREATE TABLE heartbeat_history (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL REFERENCES nodes (node_id),
    at      INTEGER NOT NULL,
    payload TEXT NOT NULL
) STRICT;
CREATE INDEX heartbeat_history_node ON heartbeat_history (node_id, seq);

CREATE TABLE policies (
    network_id BLOB NOT NULL REFERENCES networks (id),
    version    INTEGER NOT NULL CHECK (version > 0),
    document   TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (network_id, version)
) STRICT;
