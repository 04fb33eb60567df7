DROP INDEX users_tokens_valid_after;
DROP TABLE revoked_tokens;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
