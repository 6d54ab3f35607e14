-- playproof schema, version 6 (PostgreSQL): final billing statements, kept once.
--
-- A statement is final once nothing can change its period (server/statements.py);
-- then its JSON document is kept here and answered byte for byte ever after.
-- billed_lines are the period's lines as last billed: its own at first, then what a
-- later final statement adjusted them to (billed_by names it). billed_mark is the
-- verification_log id they were counted at; billed_rev guards each move, so that a
-- correction is billed once. supplier_id and campaign_id are the statement's
-- filters, '' for none.
CREATE TABLE statements (
    period_from  bigint NOT NULL,
    period_to    bigint NOT NULL,
    tz           text COLLATE "C" NOT NULL,
    supplier_id  text COLLATE "C" NOT NULL,
    campaign_id  text COLLATE "C" NOT NULL,
    document     text NOT NULL,
    digest       text NOT NULL,
    finalized_at bigint NOT NULL,
    log_mark     bigint NOT NULL,
    billed_lines text NOT NULL,
    billed_mark  bigint NOT NULL,
    billed_rev   bigint NOT NULL DEFAULT 0,
    billed_by    text,
    PRIMARY KEY (period_from, period_to, tz, supplier_id, campaign_id)
);
CREATE INDEX statements_scope ON statements (supplier_id, campaign_id, period_to);
