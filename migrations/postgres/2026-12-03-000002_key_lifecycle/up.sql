-- A portable mutex: a transaction that first UPDATEs a row here holds it until commit
-- (a row lock on PostgreSQL, the database write lock on SQLite). Key rotation, revocation
-- and the removal sweep take 'signing_keys' so that one replica at a time changes keys.
CREATE TABLE locks (
    name        TEXT PRIMARY KEY NOT NULL,
    holder      TEXT,
    acquired_at BIGINT
);
INSERT INTO locks (name) VALUES ('signing_keys');
