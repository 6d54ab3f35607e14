-- playproof schema, version 1 (PostgreSQL)
--
-- Created in the connection's current schema (the first of its search_path).
-- Identifiers use the "C" collation: they are ASCII, compare byte for byte as
-- in SQLite, and their indexes are cheaper to maintain.
--
-- Dedupe: a unique key on a table partitioned by start_ts must include
-- start_ts, which would let the same (device_id, journal_id, seq) with another
-- start_ts in twice. So the key lives in impression_keys, not partitioned; the
-- rows live in the partitioned impressions table; both are written in the same
-- transaction, under the journal's row lock (see docs/postgres.md).

CREATE TABLE devices (
    device_id   text COLLATE "C" PRIMARY KEY,
    store_id    text COLLATE "C" NOT NULL,
    token_hash  text COLLATE "C" NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

CREATE TABLE impression_keys (
    device_id   text COLLATE "C" NOT NULL,
    journal_id  text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    checksum    text COLLATE "C" NOT NULL,
    start_ts    bigint NOT NULL,
    PRIMARY KEY (device_id, journal_id, seq)
);

CREATE TABLE impressions (
    device_id         text COLLATE "C" NOT NULL,
    journal_id        text COLLATE "C" NOT NULL,
    seq               bigint NOT NULL,
    campaign_id       text COLLATE "C" NOT NULL,
    ad_group_id       text COLLATE "C" NOT NULL,
    content_id        text COLLATE "C" NOT NULL,
    store_id          text COLLATE "C" NOT NULL,
    supplier_id       text COLLATE "C" NOT NULL,
    start_ts          bigint NOT NULL,
    end_ts            bigint NOT NULL,
    duration_ms       bigint NOT NULL,
    expected_ms       bigint NOT NULL,
    end_reason        text COLLATE "C" NOT NULL,
    clock_offset_ms   bigint NOT NULL,
    clock_synced      boolean NOT NULL,
    screenshot_sha256 text COLLATE "C",
    screenshot_at_ms  bigint,
    checksum          text COLLATE "C" NOT NULL,
    status            text COLLATE "C" NOT NULL,
    quality           integer NOT NULL,
    flags             text COLLATE "C" NOT NULL,
    verification      text COLLATE "C",
    received_at       bigint NOT NULL,
    skew_ms           bigint NOT NULL
) PARTITION BY RANGE (start_ts);

-- One partition per UTC day (impressions_pYYYYMMDD), created ahead of time by
-- the service; the default partition catches anything outside them.
CREATE TABLE impressions_default PARTITION OF impressions DEFAULT;

-- The report queries: per campaign, supplier, store and device over time
-- (partition pruning narrows the time; the index narrows the rest).
CREATE INDEX impressions_campaign ON impressions (campaign_id, start_ts);
CREATE INDEX impressions_supplier ON impressions (supplier_id, start_ts);
CREATE INDEX impressions_store ON impressions (store_id, start_ts);
CREATE INDEX impressions_device ON impressions (device_id, start_ts);
CREATE INDEX impressions_time ON impressions USING brin (start_ts);
CREATE INDEX impressions_screenshot ON impressions (screenshot_sha256)
    WHERE screenshot_sha256 IS NOT NULL;

CREATE TABLE rejects (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submitted_by text COLLATE "C" NOT NULL,
    device_id    text COLLATE "C",
    journal_id   text COLLATE "C",
    seq          bigint,
    checksum     text COLLATE "C",
    reason       text COLLATE "C" NOT NULL,
    detail       text NOT NULL,
    raw          text NOT NULL,
    sent_at      bigint NOT NULL,
    received_at  bigint NOT NULL,
    skew_ms      bigint NOT NULL,
    times        integer NOT NULL DEFAULT 1,
    UNIQUE (device_id, journal_id, seq, checksum, reason)
);
CREATE INDEX rejects_received ON rejects (received_at);
CREATE INDEX rejects_device ON rejects (submitted_by, received_at);

CREATE TABLE journals (
    device_id     text COLLATE "C" NOT NULL,
    journal_id    text COLLATE "C" NOT NULL,
    high_water    bigint NOT NULL,
    high_water_ts bigint NOT NULL,
    first_seen    bigint NOT NULL,
    last_seen     bigint NOT NULL,
    PRIMARY KEY (device_id, journal_id)
);

CREATE TABLE gaps (
    device_id  text COLLATE "C" NOT NULL,
    journal_id text COLLATE "C" NOT NULL,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    before_ts  bigint NOT NULL,
    after_ts   bigint NOT NULL,
    PRIMARY KEY (device_id, journal_id, first_seq)
);

CREATE TABLE device_status (
    device_id     text COLLATE "C" PRIMARY KEY,
    received_at   bigint NOT NULL,
    payload       json NOT NULL,
    evicted_total bigint NOT NULL DEFAULT 0
);

CREATE TABLE evictions (
    device_id   text COLLATE "C" NOT NULL,
    journal_id  text COLLATE "C" NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    reported_at bigint NOT NULL,
    PRIMARY KEY (device_id, journal_id, first_seq, last_seq)
);

CREATE TABLE screenshots (
    sha256       text COLLATE "C" PRIMARY KEY,
    content_type text NOT NULL,
    size         bigint NOT NULL,
    device_id    text COLLATE "C" NOT NULL,
    received_at  bigint NOT NULL
);
