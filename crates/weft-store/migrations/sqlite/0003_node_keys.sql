-- weft-store schema 3 (SQLite): each node's public keys, recorded at
-- enrollment, so the control plane can serve the network file (the
-- roster of signing keys and X-Wing keys) to agents. Nodes enrolled
-- before schema 3 have none and are left out of the network file.
--
-- approved_at: when the node became approved (at enrollment, or when an
-- operator approved it). The network file lists nodes in that order and
-- keeps revoked ones, so agents see an append-only roster: an index never
-- moves (revocation travels in the signed revocation list instead).

ALTER TABLE nodes ADD COLUMN signing_key BLOB;
ALTER TABLE nodes ADD COLUMN kem_key BLOB;
ALTER TABLE nodes ADD COLUMN approved_at INTEGER;
UPDATE nodes SET approved_at = status_changed_at WHERE status = 'approved';
CREATE INDEX nodes_membership ON nodes (network_id, approved_at, node_id);
