-- playproof schema, version 5 (SQLite): the catalog of what was booked, and verification.
--
-- catalog_entries holds each entry's document (JSON) by kind and id; a retired
-- entry keeps its row with `retired_at`. catalog_changes keeps every change with
-- its time, before and after, so that a past decision can always be explained.
CREATE TABLE catalog_entries (
    kind       TEXT NOT NULL,
    entry_id   TEXT NOT NULL,
    doc        TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    retired_at INTEGER,
    PRIMARY KEY (kind, entry_id)
) WITHOUT ROWID;

CREATE TABLE catalog_changes (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    action   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);

-- Reference images of a content (perceptual hashes of uploaded blobs).
CREATE TABLE content_references (
    content_id TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    phash      TEXT NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (content_id, sha256)
) WITHOUT ROWID;

-- What a screenshot shows, worked out once per blob.
CREATE TABLE screenshot_facts (
    sha256 TEXT PRIMARY KEY,
    phash  TEXT,
    blank  INTEGER NOT NULL,
    error  TEXT
) WITHOUT ROWID;

-- Every decision (and every return to pending on a catalog change), kept.
ALTER TABLE impressions ADD COLUMN verification_reasons TEXT;
ALTER TABLE impressions ADD COLUMN verified_at INTEGER;
CREATE INDEX impressions_pending ON impressions (device_id, received_at, journal_id, seq)
    WHERE verification = 'pending';
CREATE INDEX impressions_device_start ON impressions (device_id, start_ts);

CREATE TABLE verification_log (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    journal_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    status     TEXT NOT NULL,
    reasons    TEXT NOT NULL,
    cause      TEXT NOT NULL
);
CREATE INDEX verification_log_key ON verification_log (device_id, journal_id, seq);

-- Decided plays per hour of start_ts: one row per status with reason '', and one
-- per reason of a failed play; written in the decision's transaction.
CREATE TABLE rollup_verification (
    bucket      INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    ad_group_id TEXT NOT NULL,
    supplier_id TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    plays       INTEGER NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, reason)
) STRICT, WITHOUT ROWID;
