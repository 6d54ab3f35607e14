-- playproof schema, version 2 (SQLite): operators, and the delivery rollups.
--
-- The rollups hold, per time bucket of start_ts (epoch ms, floored) and report
-- dimensions, the sums the delivery report needs. They are written in the same
-- transaction as the impression rows, from deltas computed once in
-- stores/rollup.py; the bucket widths below must match ROLLUPS there.

CREATE TABLE operators (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- 15-minute buckets, without store and device: small, serves every time zone.
CREATE TABLE rollup_content (
    bucket      INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    ad_group_id TEXT NOT NULL,
    content_id  TEXT NOT NULL,
    supplier_id TEXT NOT NULL,
    plays       INTEGER NOT NULL,
    valid       INTEGER NOT NULL,
    played_ms   INTEGER NOT NULL,
    quality_sum INTEGER NOT NULL,
    restarts    INTEGER NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, content_id, supplier_id)
) WITHOUT ROWID;

-- Hourly buckets with every dimension.
CREATE TABLE rollup_device (
    bucket      INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    ad_group_id TEXT NOT NULL,
    content_id  TEXT NOT NULL,
    supplier_id TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    plays       INTEGER NOT NULL,
    valid       INTEGER NOT NULL,
    played_ms   INTEGER NOT NULL,
    quality_sum INTEGER NOT NULL,
    restarts    INTEGER NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, content_id, supplier_id, store_id, device_id)
) WITHOUT ROWID;

-- Listing and exporting by time: (start_ts, device_id, journal_id, seq), since
-- the primary key rides along in every index of a WITHOUT ROWID table.
CREATE INDEX impressions_start ON impressions (start_ts);

INSERT INTO rollup_content
SELECT start_ts / 900000 * 900000, campaign_id, ad_group_id, content_id, supplier_id,
       count(*), sum(status = 'valid'), sum(duration_ms), sum(quality),
       sum(end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_device
SELECT start_ts / 3600000 * 3600000, campaign_id, ad_group_id, content_id, supplier_id,
       store_id, device_id,
       count(*), sum(status = 'valid'), sum(duration_ms), sum(quality),
       sum(end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- Screenshots are found from their impression (by the screenshots table's key), never the
-- other way round; an index keyed by a random hash cost every insert a page of its own.
DROP INDEX IF EXISTS impressions_screenshot;
