//! Diesel table definitions, identical for both backends (see migrations/).

diesel::table! {
    users (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        disabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
        tokens_valid_after -> Nullable<BigInt>,
    }
}

diesel::table! {
    user_roles (user_id, role) {
        user_id -> Text,
        role -> Text,
        granted_at -> BigInt,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        alg -> Text,
        public_key -> Binary,
        private_key_sealed -> Nullable<Binary>,
        kek_id -> Text,
        created_at -> BigInt,
        activates_at -> BigInt,
        retires_at -> Nullable<BigInt>,
        removes_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Text,
        at -> BigInt,
        kind -> Text,
        actor -> Nullable<Text>,
        subject -> Nullable<Text>,
        ip -> Nullable<Text>,
        detail -> Nullable<Text>,
    }
}

diesel::joinable!(user_roles -> users (user_id));

diesel::table! {
    locks (name) {
        name -> Text,
        holder -> Nullable<Text>,
        acquired_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        last_used_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        revoke_reason -> Nullable<Text>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        session_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    revoked_tokens (jti) {
        jti -> Text,
        user_id -> Text,
        expires_at -> BigInt,
        revoked_at -> BigInt,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    user_roles,
    signing_keys,
    audit_events,
    locks,
    sessions,
    refresh_tokens,
    revoked_tokens
);
