-- playproof schema, version 8 (PostgreSQL): bounded sequence gaps.
--
-- A commit loads only the gaps its arrivals can fill, and needs to know how many
-- a journal holds without counting them: journals.gap_count keeps that number.
-- Past Policy.max_open_gaps a new gap is merged into the journal's last one and
-- the journal is marked suspect (its gaps may hold sequences that did arrive);
-- it stays so until no gap is left. Journals kept before this version get
-- their count here; none of them had merged gaps.
ALTER TABLE journals ADD COLUMN gap_count bigint NOT NULL DEFAULT 0;
ALTER TABLE journals ADD COLUMN suspect boolean NOT NULL DEFAULT false;
UPDATE journals SET gap_count = (
    SELECT count(*) FROM gaps g
    WHERE g.device_id = journals.device_id AND g.journal_id = journals.journal_id
);
