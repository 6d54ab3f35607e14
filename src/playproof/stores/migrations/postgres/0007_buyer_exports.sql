-- playproof schema, version 7 (PostgreSQL): the export ledger of the buyer formats.
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
-- export looks up to take only what is not settled yet. Exports for one buyer
-- take a transaction-level advisory lock, so that two never take the same play.
CREATE TABLE exports (
    export_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    buyer           text COLLATE "C" NOT NULL,
    created_at      bigint NOT NULL,
    since_last      integer NOT NULL,
    range_from      bigint,
    range_to        bigint,
    seller_id       text,
    catalog_version bigint NOT NULL,
    plays           bigint NOT NULL,
    skipped         bigint NOT NULL,
    -- An incremental export (since=last): the verification_log id it took every
    -- verified play up to; the next takes the plays verified after it.
    log_id          bigint
);

CREATE TABLE export_plays (
    export_id  bigint NOT NULL,
    buyer      text COLLATE "C" NOT NULL,
    device_id  text COLLATE "C" NOT NULL,
    journal_id text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    start_ts   bigint NOT NULL,
    end_ts     bigint NOT NULL,
    -- Where the buyer files a contained play: Playout's frame id, DV360's
    -- (ad unit, line, creative, start) key; NULL when listed apart.
    slot       text COLLATE "C",
    -- NULL: contained; else the reasons it was listed apart, comma-separated.
    reason     text,
    settled    integer NOT NULL,
    record     text,
    PRIMARY KEY (export_id, start_ts, device_id, journal_id, seq)
);
-- The play's key first: a lookup always probes it, whatever the planner's statistics say.
CREATE UNIQUE INDEX export_plays_settled ON export_plays (device_id, journal_id, seq, buyer)
    WHERE settled = 1;
-- Slots of the two buyers never collide (a frame id is digits, a DV360 slot a JSON array):
-- the slot leads, so that a lookup of many slots is many index probes.
CREATE INDEX export_plays_slot ON export_plays (slot, end_ts) WHERE reason IS NULL;
-- The plays listed apart for a reason that can lift, which the next export tries again.
CREATE INDEX export_plays_unsettled ON export_plays (buyer, export_id) WHERE settled = 0;
