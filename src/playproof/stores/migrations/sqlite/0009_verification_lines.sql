-- playproof schema, version 9 (SQLite): the verification rollup without the screen.
--
-- A statement counts verified and failed plays per supplier, campaign and ad group;
-- read from rollup_verification it grouped a row per screen and hour (3.5 s for a
-- month of 10 M plays from 192 screens). This table holds the same counts per line
-- and hour, kept in the decision's transaction like the other, filled here from it.
CREATE TABLE rollup_verification_line (
    bucket      INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    ad_group_id TEXT NOT NULL,
    supplier_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    plays       INTEGER NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, supplier_id, status, reason)
) STRICT, WITHOUT ROWID;
INSERT INTO rollup_verification_line
    SELECT bucket, campaign_id, ad_group_id, supplier_id, status, reason, SUM(plays)
    FROM rollup_verification
    GROUP BY bucket, campaign_id, ad_group_id, supplier_id, status, reason
    HAVING SUM(plays) <> 0;
