-- playproof schema, version 2 (PostgreSQL): operators, and the delivery rollups.
--
-- The rollups hold, per time bucket of start_ts (epoch ms, floored) and report
-- dimensions, the sums the delivery report needs. They are written in the same
-- transaction as the impression rows, from deltas computed once in
-- stores/rollup.py; the bucket widths below must match ROLLUPS there.

CREATE TABLE operators (
    name        text COLLATE "C" PRIMARY KEY,
    token_hash  text COLLATE "C" NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

-- 15-minute buckets, without store and device: small, serves every time zone.
CREATE TABLE rollup_content (
    bucket      bigint NOT NULL,
    campaign_id text COLLATE "C" NOT NULL,
    ad_group_id text COLLATE "C" NOT NULL,
    content_id  text COLLATE "C" NOT NULL,
    supplier_id text COLLATE "C" NOT NULL,
    plays       bigint NOT NULL,
    valid       bigint NOT NULL,
    played_ms   bigint NOT NULL,
    quality_sum bigint NOT NULL,
    restarts    bigint NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, content_id, supplier_id)
);

-- Hourly buckets with every dimension.
CREATE TABLE rollup_device (
    bucket      bigint NOT NULL,
    campaign_id text COLLATE "C" NOT NULL,
    ad_group_id text COLLATE "C" NOT NULL,
    content_id  text COLLATE "C" NOT NULL,
    supplier_id text COLLATE "C" NOT NULL,
    store_id    text COLLATE "C" NOT NULL,
    device_id   text COLLATE "C" NOT NULL,
    plays       bigint NOT NULL,
    valid       bigint NOT NULL,
    played_ms   bigint NOT NULL,
    quality_sum bigint NOT NULL,
    restarts    bigint NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, content_id, supplier_id, store_id, device_id)
);

-- Listing and exporting in key order by time, one page at a time.
CREATE INDEX impressions_start ON impressions (start_ts, device_id, journal_id, seq);

INSERT INTO rollup_content
SELECT start_ts / 900000 * 900000, campaign_id, ad_group_id, content_id, supplier_id,
       count(*), count(*) FILTER (WHERE status = 'valid'), sum(duration_ms), sum(quality),
       count(*) FILTER (WHERE end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_device
SELECT start_ts / 3600000 * 3600000, campaign_id, ad_group_id, content_id, supplier_id,
       store_id, device_id,
       count(*), count(*) FILTER (WHERE status = 'valid'), sum(duration_ms), sum(quality),
       count(*) FILTER (WHERE end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- Screenshots are found from their impression (by the screenshots table's key), never the
-- other way round; an index keyed by a random hash cost every insert a page of its own.
DROP INDEX IF EXISTS impressions_screenshot;
