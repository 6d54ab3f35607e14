-- playproof schema, version 7 (SQLite): the export ledger of the buyer formats.
--
-- exports: one row per export (DV360 ad plays or a UK Playout file), with what
-- was asked and the catalog version it was made with. export_plays: every play
-- an export took, each with its rendered record (a Playout CSV line, a DV360
-- CreateAdPlayRequest) when the export contains it, or the reasons it was listed
-- apart. A re-export by id is those records again, in key order, byte for byte.
--
-- A play is settled for a buyer once an export contains it, or listed it apart
-- for a reason nothing can lift (too old, an overlap, a duplicate): the unique
-- index below makes "never sent twice" a constraint, and is what an incremental
-- export looks up to take only what is not settled yet.
CREATE TABLE exports (
    export_id       INTEGER PRIMARY KEY,
    buyer           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    since_last      INTEGER NOT NULL,
    range_from      INTEGER,
    range_to        INTEGER,
    seller_id       TEXT,
    catalog_version INTEGER NOT NULL,
    plays           INTEGER NOT NULL,
    skipped         INTEGER NOT NULL,
    -- An incremental export (since=last): the verification_log id it took every
    -- verified play up to; the next takes the plays verified after it.
    log_id          INTEGER
);

CREATE TABLE export_plays (
    export_id  INTEGER NOT NULL,
    buyer      TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    journal_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    start_ts   INTEGER NOT NULL,
    end_ts     INTEGER NOT NULL,
    -- Where the buyer files a contained play: Playout's frame id, DV360's
    -- (ad unit, line, creative, start) key; NULL when listed apart.
    slot       TEXT,
    -- NULL: contained; else the reasons it was listed apart, comma-separated.
    reason     TEXT,
    settled    INTEGER NOT NULL,
    record     TEXT,
    PRIMARY KEY (export_id, start_ts, device_id, journal_id, seq)
) WITHOUT ROWID;
-- The play's key first: a lookup always probes it, whatever the planner's statistics say.
CREATE UNIQUE INDEX export_plays_settled ON export_plays (device_id, journal_id, seq, buyer)
    WHERE settled = 1;
-- Slots of the two buyers never collide (a frame id is digits, a DV360 slot a JSON array):
-- the slot leads, so that a lookup of many slots is many index probes.
CREATE INDEX export_plays_slot ON export_plays (slot, end_ts) WHERE reason IS NULL;
-- The plays listed apart for a reason that can lift, which the next export tries again.
CREATE INDEX export_plays_unsettled ON export_plays (buyer, export_id) WHERE settled = 0;
