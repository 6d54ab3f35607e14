-- playproof schema, version 11 (PostgreSQL): a version number for devices and their keys.
--
-- The service keeps what each device token stands for in memory. Rather than read
-- every connected device again every couple of seconds (10,000 screens: thousands of
-- reads a second), it reads this one number every second and forgets its cache when
-- it has moved. Triggers move it on any change to a device or a device key, whoever
-- makes it: the service, the CLI in another process, another node.
--
-- The triggers are deferred to the commit: the one row is then locked only for the
-- end of a transaction, and always last, so two transactions changing devices never
-- wait on each other through it in a cycle.
CREATE TABLE device_changes (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO device_changes (id, version) VALUES (1, 0);

CREATE OR REPLACE FUNCTION device_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_changes SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION device_changed();
CREATE CONSTRAINT TRIGGER device_keys_changed AFTER INSERT OR UPDATE OR DELETE ON device_keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION device_changed();
