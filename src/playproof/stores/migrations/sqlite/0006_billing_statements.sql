-- playproof schema, version 6 (SQLite): final billing statements, kept once.
--
-- A statement is final once nothing can change its period (server/statements.py);
-- then its JSON document is kept here and answered byte for byte ever after.
-- billed_lines are the period's lines as last billed: its own at first, then what a
-- later final statement adjusted them to (billed_by names it). billed_mark is the
-- verification_log id they were counted at; billed_rev guards each move, so that a
-- correction is billed once. supplier_id and campaign_id are the statement's
-- filters, '' for none.
CREATE TABLE statements (
    period_from  INTEGER NOT NULL,
    period_to    INTEGER NOT NULL,
    tz           TEXT NOT NULL,
    supplier_id  TEXT NOT NULL,
    campaign_id  TEXT NOT NULL,
    document     TEXT NOT NULL,
    digest       TEXT NOT NULL,
    finalized_at INTEGER NOT NULL,
    log_mark     INTEGER NOT NULL,
    billed_lines TEXT NOT NULL,
    billed_mark  INTEGER NOT NULL,
    billed_rev   INTEGER NOT NULL DEFAULT 0,
    billed_by    TEXT,
    PRIMARY KEY (period_from, period_to, tz, supplier_id, campaign_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX statements_scope ON statements (supplier_id, campaign_id, period_to);
