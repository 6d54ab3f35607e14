-- playproof schema, version 10 (SQLite): protocol version 2, signed plays and panel evidence.
--
-- impressions: version 2's four wire fields, NULL in a version-1 row (a row is
-- signed when key_id is set), so that the exact record a device signed can be
-- rebuilt for the evidence export.
-- devices: whether the device may register keys itself (an operator closes it),
-- and whether its version-1 records are refused (set by its first key, or by an
-- operator before it has one).
-- device_keys: every key a device holds or held; revoked_at on the service's clock.
-- key_log: append-only; each entry carries the SHA-256 of the previous entry's
-- canonical JSON (entry_hash), so that a rewritten entry breaks the chain.
ALTER TABLE impressions ADD COLUMN key_id TEXT;
ALTER TABLE impressions ADD COLUMN panel_source TEXT;
ALTER TABLE impressions ADD COLUMN panel_state TEXT;
ALTER TABLE impressions ADD COLUMN sig TEXT;

ALTER TABLE devices ADD COLUMN self_enrol INTEGER NOT NULL DEFAULT 1;
ALTER TABLE devices ADD COLUMN signatures_required INTEGER NOT NULL DEFAULT 0;

CREATE TABLE device_keys (
    device_id     TEXT NOT NULL REFERENCES devices (device_id),
    key_id        TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    registered_by TEXT NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    PRIMARY KEY (device_id, key_id)
);
-- A key id names one key of one device: the same key on two devices is refused,
-- and two registrations racing for it cannot both land.
CREATE UNIQUE INDEX device_keys_key_id ON device_keys (key_id);

CREATE TABLE key_log (
    entry      INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_id     TEXT,
    public_key TEXT,
    actor      TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);

-- Nothing rewrites or removes a log entry, whatever the code above does.
CREATE TRIGGER key_log_no_update BEFORE UPDATE ON key_log
BEGIN SELECT RAISE(ABORT, 'key_log is append-only'); END;
CREATE TRIGGER key_log_no_delete BEFORE DELETE ON key_log
BEGIN SELECT RAISE(ABORT, 'key_log is append-only'); END;
