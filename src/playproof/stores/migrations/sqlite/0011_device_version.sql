-- playproof schema, version 11 (SQLite): a version number for devices and their keys.
--
-- The service keeps what each device token stands for in memory. Rather than read
-- every connected device again every couple of seconds (10,000 screens: thousands of
-- reads a second), it reads this one number every second and forgets its cache when
-- it has moved. Triggers move it on any change to a device or a device key, whoever
-- makes it: the service, the CLI in another process, another node.
CREATE TABLE device_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO device_changes (id, version) VALUES (1, 0);

CREATE TRIGGER devices_inserted AFTER INSERT ON devices
BEGIN UPDATE device_changes SET version = version + 1; END;
CREATE TRIGGER devices_updated AFTER UPDATE ON devices
BEGIN UPDATE device_changes SET version = version + 1; END;
CREATE TRIGGER devices_deleted AFTER DELETE ON devices
BEGIN UPDATE device_changes SET version = version + 1; END;
CREATE TRIGGER device_keys_inserted AFTER INSERT ON device_keys
BEGIN UPDATE device_changes SET version = version + 1; END;
CREATE TRIGGER device_keys_updated AFTER UPDATE ON device_keys
BEGIN UPDATE device_changes SET version = version + 1; END;
CREATE TRIGGER device_keys_deleted AFTER DELETE ON device_keys
BEGIN UPDATE device_changes SET version = version + 1; END;
