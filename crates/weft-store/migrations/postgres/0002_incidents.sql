-- weft-store schema 2 (PostgreSQL): the self-healing loop's incidents and
-- the actions taken on them. Times are microseconds since the Unix epoch,
-- UTC.

CREATE TABLE incidents (
    id          UUID PRIMARY KEY,
    network_id  UUID REFERENCES networks (id),
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'escalated', 'resolved')),
    severity    TEXT NOT NULL,
    target      TEXT NOT NULL,
    opened_at   BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    resolved_at BIGINT,
    document    TEXT NOT NULL
);
CREATE INDEX incidents_opened ON incidents (opened_at, id);
CREATE INDEX incidents_status ON incidents (status, opened_at);

-- `kind` repeats the incident's kind so outcome statistics need no join.
CREATE TABLE incident_actions (
    incident_id UUID NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL CHECK (seq >= 0),
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'succeeded', 'failed')),
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (incident_id, seq)
);
CREATE INDEX incident_actions_kind ON incident_actions (kind, action);
