-- playproof schema, version 9 (PostgreSQL): the verification rollup without the screen.
--
-- A statement counts verified and failed plays per supplier, campaign and ad group;
-- read from rollup_verification it grouped a row per screen and hour. This table holds
-- the same counts per line and hour, kept in the decision's transaction like the
-- other, filled here from it.
CREATE TABLE rollup_verification_line (
    bucket      bigint NOT NULL,
    campaign_id text COLLATE "C" NOT NULL,
    ad_group_id text COLLATE "C" NOT NULL,
    supplier_id text COLLATE "C" NOT NULL,
    status      text COLLATE "C" NOT NULL,
    reason      text COLLATE "C" NOT NULL,
    plays       bigint NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, supplier_id, status, reason)
);
INSERT INTO rollup_verification_line
    SELECT bucket, campaign_id, ad_group_id, supplier_id, status, reason, SUM(plays)
    FROM rollup_verification
    GROUP BY bucket, campaign_id, ad_group_id, supplier_id, status, reason
    HAVING SUM(plays) <> 0;
