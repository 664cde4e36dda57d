-- weft-store schema 3 (PostgreSQL): each node's public keys, recorded at
-- enrollment, so the control plane can serve the network file (the
-- roster of signing keys and X-Wing keys) to agents. Nodes enrolled
-- before schema 3 have none and are left out of the network file.

ALTER TABLE nodes ADD COLUMN signing_key BYTEA;
ALTER TABLE nodes ADD COLUMN kem_key BYTEA;
CREATE INDEX nodes_enrollment ON nodes (network_id, enrolled_at, node_id);
