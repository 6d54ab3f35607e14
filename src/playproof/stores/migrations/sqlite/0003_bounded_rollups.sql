-- playproof schema, version 3 (SQLite): delivery rollups that cannot overflow.
--
-- Before durations were bounded, a device could claim duration_ms = 2^53 - 1:
-- a few thousand such plays in one rollup row took `played_ms + excluded.played_ms`
-- past 64 bits, which SQLite silently stores as an inexact REAL, and the report's
-- SUM() then failed with "integer overflow". The rollups are rebuilt from the rows,
-- each play counting at most 24 h (86400000 ms, DURATION_CEILING_MS in rules.py,
-- as stores/rollup.py clamps every later one), as STRICT tables: a value that is
-- not an integer is refused there instead of stored.

DROP TABLE rollup_content;
DROP TABLE rollup_device;

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
) STRICT, WITHOUT ROWID;

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
) STRICT, WITHOUT ROWID;

INSERT INTO rollup_content
SELECT start_ts / 900000 * 900000, campaign_id, ad_group_id, content_id, supplier_id,
       count(*), sum(status = 'valid'), sum(min(duration_ms, 86400000)), sum(quality),
       sum(end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_device
SELECT start_ts / 3600000 * 3600000, campaign_id, ad_group_id, content_id, supplier_id,
       store_id, device_id,
       count(*), sum(status = 'valid'), sum(min(duration_ms, 86400000)), sum(quality),
       sum(end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5, 6, 7;
