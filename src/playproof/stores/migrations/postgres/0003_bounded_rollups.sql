-- playproof schema, version 3 (PostgreSQL): delivery rollups that cannot overflow.
--
-- Before durations were bounded, a device could claim duration_ms = 2^53 - 1: a
-- few thousand such plays took a rollup row's played_ms near the bigint limit, and
-- from then on every commit adding to that row failed with 22003 (numeric value out
-- of range). The rollups are rebuilt from the rows, each play counting at most 24 h
-- (86400000 ms, DURATION_CEILING_MS in rules.py, as stores/rollup.py clamps every
-- later one).

DELETE FROM rollup_content;
DELETE FROM rollup_device;

INSERT INTO rollup_content
SELECT start_ts / 900000 * 900000, campaign_id, ad_group_id, content_id, supplier_id,
       count(*), count(*) FILTER (WHERE status = 'valid'), sum(least(duration_ms, 86400000)),
       sum(quality), count(*) FILTER (WHERE end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5;

INSERT INTO rollup_device
SELECT start_ts / 3600000 * 3600000, campaign_id, ad_group_id, content_id, supplier_id,
       store_id, device_id,
       count(*), count(*) FILTER (WHERE status = 'valid'), sum(least(duration_ms, 86400000)),
       sum(quality), count(*) FILTER (WHERE end_reason = 'device_restart')
FROM impressions GROUP BY 1, 2, 3, 4, 5, 6, 7;
