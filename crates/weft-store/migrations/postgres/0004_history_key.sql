-- weft-store schema 4 (PostgreSQL): a node's heartbeat history is found by a
-- small key instead of its 52-character id.
--
-- node_key: the node id's four 8-byte words XORed together, a signed
-- 64-bit integer written by the store with each row. The index on
-- (node_id, seq) held the whole id in every entry: a batch of heartbeats
-- from a thousand nodes rewrote most of its pages, about half of what the
-- batch wrote. Entries of (node_key, seq) are a fifth of that size. Reads
-- match node_id as well, so two ids with the same key (odds of 1 in 2^64
-- per pair) never mix; only their pruning is shared.
--
-- Rows written before schema 4 have no key until the store, when it
-- opens, writes it (it cannot be computed in SQL).

ALTER TABLE heartbeat_history ADD COLUMN node_key BIGINT;
DROP INDEX heartbeat_history_node;
CREATE INDEX heartbeat_history_key ON heartbeat_history (node_key, seq);
