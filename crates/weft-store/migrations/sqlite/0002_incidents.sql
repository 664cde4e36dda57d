-- weft-store schema 2 (SQLite): the self-healing loop's incidents and the
-- actions taken on them. Times are microseconds since the Unix epoch, UTC.

CREATE TABLE incidents (
    id          BLOB PRIMARY KEY NOT NULL,
    network_id  BLOB REFERENCES networks (id),
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'escalated', 'resolved')),
    severity    TEXT NOT NULL,
    target      TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    resolved_at INTEGER,
    document    TEXT NOT NULL
) STRICT;
CREATE INDEX incidents_opened ON incidents (opened_at, id);
CREATE INDEX incidents_status ON incidents (status, opened_at);

-- `kind` repeats the incident's kind so outcome statistics need no join.
CREATE TABLE incident_actions (
    incident_id BLOB NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'succeeded', 'failed')),
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (incident_id, seq)
) STRICT;
CREATE INDEX incident_actions_kind ON incident_actions (kind, action);
