-- playproof schema, version 10 (PostgreSQL): protocol version 2, signed plays and panel evidence.
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
ALTER TABLE impressions ADD COLUMN key_id text COLLATE "C";
ALTER TABLE impressions ADD COLUMN panel_source text COLLATE "C";
ALTER TABLE impressions ADD COLUMN panel_state text COLLATE "C";
ALTER TABLE impressions ADD COLUMN sig text COLLATE "C";

ALTER TABLE devices ADD COLUMN self_enrol boolean NOT NULL DEFAULT true;
ALTER TABLE devices ADD COLUMN signatures_required boolean NOT NULL DEFAULT false;

CREATE TABLE device_keys (
    device_id     text COLLATE "C" NOT NULL REFERENCES devices (device_id),
    key_id        text COLLATE "C" NOT NULL,
    public_key    text COLLATE "C" NOT NULL,
    registered_at bigint NOT NULL,
    registered_by text NOT NULL,
    revoked_at    bigint,
    revoked_by    text,
    PRIMARY KEY (device_id, key_id)
);
-- A key id names one key of one device: the same key on two devices is refused,
-- and two registrations racing for it cannot both land.
CREATE UNIQUE INDEX device_keys_key_id ON device_keys (key_id);

CREATE TABLE key_log (
    entry      bigint PRIMARY KEY,
    at         bigint NOT NULL,
    event      text NOT NULL,
    device_id  text COLLATE "C" NOT NULL,
    key_id     text COLLATE "C",
    public_key text COLLATE "C",
    actor      text NOT NULL,
    prev_hash  text NOT NULL,
    entry_hash text NOT NULL
);

-- Nothing rewrites or removes a log entry, whatever the code above does.
CREATE OR REPLACE FUNCTION key_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'key_log is append-only';
END $$;
CREATE TRIGGER key_log_no_change BEFORE UPDATE OR DELETE ON key_log
    FOR EACH ROW EXECUTE FUNCTION key_log_append_only();
