-- Ids are TEXT (UUIDv7 or random), instants are BIGINT Unix seconds, so both backends hold
-- identical values. Keep this file in step with migrations/postgres/ (same names, same shapes).
CREATE TABLE users (
    id                 TEXT PRIMARY KEY NOT NULL,
    email              TEXT NOT NULL UNIQUE,
    password_hash      TEXT NOT NULL,
    disabled           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    -- Access tokens issued before this instant are invalid (logout everywhere, password
    -- change, disable, role change).
    tokens_valid_after BIGINT
);

CREATE TABLE user_roles (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, role)
);

-- Lifecycle is by timestamps (DESIGN §5): published from created_at, signs from
-- activates_at until retires_at, published until removes_at; revoked_at ends it at once.
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY NOT NULL,
    alg                TEXT NOT NULL,
    public_key         BLOB NOT NULL,
    private_key_sealed BLOB,
    kek_id             TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    activates_at       BIGINT NOT NULL,
    retires_at         BIGINT,
    removes_at         BIGINT,
    revoked_at         BIGINT
);
CREATE INDEX signing_keys_activates_at ON signing_keys (activates_at);

CREATE TABLE audit_events (
    id      TEXT PRIMARY KEY NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    actor   TEXT,
    subject TEXT,
    ip      TEXT,
    detail  TEXT
);
CREATE INDEX audit_events_at ON audit_events (at);
