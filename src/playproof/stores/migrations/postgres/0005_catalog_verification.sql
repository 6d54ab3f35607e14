-- playproof schema, version 5 (PostgreSQL): the catalog of what was booked, and verification.
--
-- catalog_entries holds each entry's document (JSON) by kind and id; a retired
-- entry keeps its row with `retired_at`. catalog_changes keeps every change with
-- its time, before and after, so that a past decision can always be explained.
CREATE TABLE catalog_entries (
    kind       text COLLATE "C" NOT NULL,
    entry_id   text COLLATE "C" NOT NULL,
    doc        text NOT NULL,
    updated_at bigint NOT NULL,
    retired_at bigint,
    PRIMARY KEY (kind, entry_id)
);

CREATE TABLE catalog_changes (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       bigint NOT NULL,
    kind     text COLLATE "C" NOT NULL,
    entry_id text COLLATE "C" NOT NULL,
    action   text COLLATE "C" NOT NULL,
    before   text,
    after    text
);

CREATE TABLE content_references (
    content_id text COLLATE "C" NOT NULL,
    sha256     text COLLATE "C" NOT NULL,
    phash      text NOT NULL,
    added_at   bigint NOT NULL,
    PRIMARY KEY (content_id, sha256)
);

CREATE TABLE screenshot_facts (
    sha256 text COLLATE "C" PRIMARY KEY,
    phash  text,
    blank  boolean NOT NULL,
    error  text
);

ALTER TABLE impressions ADD COLUMN verification_reasons text;
ALTER TABLE impressions ADD COLUMN verified_at bigint;
CREATE INDEX impressions_pending ON impressions (device_id, received_at, journal_id, seq)
    WHERE verification = 'pending';

CREATE TABLE verification_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text COLLATE "C" NOT NULL,
    journal_id text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    at         bigint NOT NULL,
    status     text COLLATE "C" NOT NULL,
    reasons    text NOT NULL,
    cause      text NOT NULL
);
CREATE INDEX verification_log_key ON verification_log (device_id, journal_id, seq);

CREATE TABLE rollup_verification (
    bucket      bigint NOT NULL,
    campaign_id text COLLATE "C" NOT NULL,
    ad_group_id text COLLATE "C" NOT NULL,
    supplier_id text COLLATE "C" NOT NULL,
    store_id    text COLLATE "C" NOT NULL,
    device_id   text COLLATE "C" NOT NULL,
    status      text COLLATE "C" NOT NULL,
    reason      text COLLATE "C" NOT NULL,
    plays       bigint NOT NULL,
    PRIMARY KEY (bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, reason)
);
