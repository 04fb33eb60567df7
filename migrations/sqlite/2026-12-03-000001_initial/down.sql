DROP TABLE audit_events;
DROP TABLE signing_keys;
DROP TABLE user_roles;
DROP TABLE users;
