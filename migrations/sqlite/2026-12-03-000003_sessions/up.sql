-- A session is one login: the family of refresh tokens it rotates through (DESIGN §4).
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    -- Absolute expiry: no refresh extends a session past this.
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Refresh tokens are stored only as SHA-256 hashes. `used_at` is set when a token is
-- rotated; presenting it again after that is reuse.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

-- Revoked access tokens until they expire: the durable truth Redis mirrors.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);
CREATE INDEX users_tokens_valid_after ON users (tokens_valid_after);
