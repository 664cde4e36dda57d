-- weft-store schema 1 (PostgreSQL). Times are microseconds since the Unix
-- epoch, UTC. Ids are UUIDv7 as uuid.

CREATE TABLE networks (
    id               UUID PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    trust_domain     TEXT NOT NULL UNIQUE,
    ca_bundle_pem    TEXT NOT NULL,
    ca_key           BYTEA NOT NULL,
    revocation_epoch BIGINT NOT NULL DEFAULT 0 CHECK (revocation_epoch >= 0),
    created_at       BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id           UUID PRIMARY KEY,
    network_id   UUID NOT NULL REFERENCES networks (id),
    salt         BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    description  TEXT NOT NULL,
    max_uses     BIGINT NOT NULL CHECK (max_uses > 0),
    uses_left    BIGINT NOT NULL CHECK (uses_left >= 0 AND uses_left <= max_uses),
    expires_at   BIGINT NOT NULL,
    tags         TEXT NOT NULL,
    auto_approve BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL
);
CREATE INDEX join_tokens_network ON join_tokens (network_id, id);

CREATE TABLE nodes (
    node_id           TEXT PRIMARY KEY NOT NULL,
    network_id        UUID NOT NULL REFERENCES networks (id),
    spiffe_id         TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')),
    tags              TEXT NOT NULL,
    enrolled_at       BIGINT NOT NULL,
    status_changed_at BIGINT NOT NULL,
    join_token_id     UUID REFERENCES join_tokens (id) ON DELETE SET NULL,
    svid_serial       BYTEA,
    svid_not_after    BIGINT,
    last_seen         BIGINT
);
CREATE INDEX nodes_network ON nodes (network_id, node_id);
CREATE INDEX nodes_join_token ON nodes (join_token_id);

CREATE TABLE revocations (
    network_id  UUID NOT NULL REFERENCES networks (id),
    epoch       BIGINT NOT NULL CHECK (epoch > 0),
    node_id     TEXT NOT NULL UNIQUE REFERENCES nodes (node_id),
    spiffe_id   TEXT NOT NULL,
    svid_serial BYTEA,
    revoked_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (network_id, epoch)
);

CREATE TABLE api_tokens (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    salt         BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

-- One row per one-time event (the first admin token).
CREATE TABLE store_events (
    name TEXT PRIMARY KEY NOT NULL,
    at   BIGINT NOT NULL
);

CREATE TABLE audit (
    id         UUID PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    network_id UUID,
    result     TEXT NOT NULL CHECK (result IN ('success', 'denied', 'failed')),
    detail     TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_actor ON audit (actor, at);
CREATE INDEX audit_action ON audit (action, at);

CREATE TABLE heartbeats_latest (
    node_id TEXT PRIMARY KEY NOT NULL REFERENCES nodes (node_id),
    at      BIGINT NOT NULL,
    payload TEXT NOT NULL
);

CREATE TABLE heartbeat_history (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (node_id),
    at      BIGINT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX heartbeat_history_node ON heartbeat_history (node_id, seq);

CREATE TABLE policies (
    network_id UUID NOT NULL REFERENCES networks (id),
    version    BIGINT NOT NULL CHECK (version > 0),
    document   TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (network_id, version)
);
