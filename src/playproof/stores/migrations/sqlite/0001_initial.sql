-- playproof schema, version 1 (SQLite)
CREATE TABLE devices (
    device_id   TEXT PRIMARY KEY,
    store_id    TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE impressions (
    device_id         TEXT NOT NULL,
    journal_id        TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    campaign_id       TEXT NOT NULL,
    ad_group_id       TEXT NOT NULL,
    content_id        TEXT NOT NULL,
    store_id          TEXT NOT NULL,
    supplier_id       TEXT NOT NULL,
    start_ts          INTEGER NOT NULL,
    end_ts            INTEGER NOT NULL,
    duration_ms       INTEGER NOT NULL,
    expected_ms       INTEGER NOT NULL,
    end_reason        TEXT NOT NULL,
    clock_offset_ms   INTEGER NOT NULL,
    clock_synced      INTEGER NOT NULL,
    screenshot_sha256 TEXT,
    screenshot_at_ms  INTEGER,
    checksum          TEXT NOT NULL,
    status            TEXT NOT NULL,
    quality           INTEGER NOT NULL,
    flags             TEXT NOT NULL,
    verification      TEXT,
    received_at       INTEGER NOT NULL,
    skew_ms           INTEGER NOT NULL,
    PRIMARY KEY (device_id, journal_id, seq)
) WITHOUT ROWID;
CREATE INDEX impressions_screenshot ON impressions (screenshot_sha256)
    WHERE screenshot_sha256 IS NOT NULL;

CREATE TABLE rejects (
    id           INTEGER PRIMARY KEY,
    submitted_by TEXT NOT NULL,
    device_id    TEXT,
    journal_id   TEXT,
    seq          INTEGER,
    checksum     TEXT,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    raw          TEXT NOT NULL,
    sent_at      INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    skew_ms      INTEGER NOT NULL,
    times        INTEGER NOT NULL DEFAULT 1,
    UNIQUE (device_id, journal_id, seq, checksum, reason)
);
CREATE INDEX rejects_received ON rejects (received_at);
CREATE INDEX rejects_device ON rejects (submitted_by, received_at);

CREATE TABLE journals (
    device_id     TEXT NOT NULL,
    journal_id    TEXT NOT NULL,
    high_water    INTEGER NOT NULL,
    high_water_ts INTEGER NOT NULL,
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    PRIMARY KEY (device_id, journal_id)
);

CREATE TABLE gaps (
    device_id  TEXT NOT NULL,
    journal_id TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    before_ts  INTEGER NOT NULL,
    after_ts   INTEGER NOT NULL,
    PRIMARY KEY (device_id, journal_id, first_seq)
);

CREATE TABLE device_status (
    device_id     TEXT PRIMARY KEY,
    received_at   INTEGER NOT NULL,
    payload       TEXT NOT NULL,
    evicted_total INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE evictions (
    device_id   TEXT NOT NULL,
    journal_id  TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    reported_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, journal_id, first_seq, last_seq)
);

CREATE TABLE screenshots (
    sha256       TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);
