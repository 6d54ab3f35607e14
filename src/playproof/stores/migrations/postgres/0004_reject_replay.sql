-- playproof schema, version 4 (PostgreSQL): rejects remember being judged again.
--
-- `playproof rejects replay` re-judges rejected records (the day a bug is
-- fixed); the reject row stays for audit, with when it was replayed and what
-- the record became. One that became an impression no longer counts as a
-- reject in the reconciliation.
ALTER TABLE rejects ADD COLUMN replayed_at bigint;
ALTER TABLE rejects ADD COLUMN replay_result text;
CREATE INDEX rejects_reason ON rejects (reason, received_at);
