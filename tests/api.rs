//! In-process integration tests of every endpoint, each against SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use actix_web::{test, web, App, HttpResponse};
use common::*;
use serde_json::json;
use tessera::api;
use tessera::store::audit::{self, AuditKind};

#[actix_web::test]
async fn registration_normalises_the_email_and_refuses_a_second_spelling() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let r = send(
            &app,
            post_json(
                "/v1/users",
                &json!({"email": "  Alice@Example.COM ", "password": PASSWORD}),
            ),
        )
        .await;
        assert_eq!(r.status, 201, "{backend:?}");
        let body = r.json();
        assert_eq!(body["email"], "alice@example.com");
        let id = body["id"].as_str().unwrap();
        assert_eq!(
            r.header("location"),
            Some(format!("/v1/admin/users/{id}").as_str())
        );
        assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(body.get("password_hash").is_none());

        for spelling in [
            "alice@example.com",
            "ALICE@EXAMPLE.COM",
            "ａｌｉｃｅ@example.com",
        ] {
            let r = send(
                &app,
                post_json(
                    "/v1/users",
                    &json!({"email": spelling, "password": PASSWORD}),
                ),
            )
            .await;
            r.assert_problem(409, "email_taken");
        }
        assert_eq!(ctx.count_users().await, 1, "{backend:?}");
        let id = id.to_owned();
        let events = ctx
            .state
            .db
            .run(move |c| audit::list_for_subject(c, AuditKind::UserRegistered, &id))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }
}

#[actix_web::test]
async fn fifty_concurrent_registrations_of_one_address_create_exactly_one_user() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let attempts = (0..50).map(|i| {
            let email = if i % 2 == 0 {
                "Race@Example.com"
            } else {
                "race@example.COM"
            };
            send(
                &app,
                post_json("/v1/users", &json!({"email": email, "password": PASSWORD})),
            )
        });
        let replies = futures_util::future::join_all(attempts).await;
        let created = replies.iter().filter(|r| r.status == 201).count();
        let taken = replies
            .iter()
            .filter(|r| r.status == 409 && r.json()["code"] == "email_taken")
            .count();
        assert_eq!(
            (created, taken),
            (1, 49),
            "{backend:?}: {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert_eq!(ctx.count_users().await, 1);
    }
}

#[actix_web::test]
async fn invalid_registrations_report_each_field_and_write_nothing() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let field_codes = |body: &serde_json::Value| -> Vec<(String, String)> {
            body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap().to_owned(),
                        e["code"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };

        let r = send(
            &app,
            post_json(
                "/v1/users",
                &json!({"email": "not-an-email", "password": "short"}),
            ),
        )
        .await;
        let body = r.assert_problem(400, "validation_failed");
        let codes = field_codes(&body);
        assert!(
            codes.contains(&("email".into(), "invalid".into())),
            "{codes:?}"
        );
        assert!(
            codes.contains(&("password".into(), "too_short".into())),
            "{codes:?}"
        );

        let cases = [
            (
                json!({"email": "bob@example.com", "password": "password123"}),
                "password",
                "too_weak",
            ),
            (
                json!({"email": "kowalski@example.com", "password": "Kowalski-violet-tundra-88"}),
                "password",
                "contains_email",
            ),
            (
                json!({"email": "bob@example.com", "password": "x".repeat(1025)}),
                "password",
                "too_long",
            ),
            (json!({"email": "bob@example.com"}), "password", "required"),
            (json!({"password": PASSWORD}), "email", "required"),
            (
                json!({"email": "bob@example.com", "password": 12345678}),
                "password",
                "invalid_type",
            ),
            (
                json!({"email": ["bob@example.com"], "password": PASSWORD}),
                "email",
                "invalid_type",
            ),
            (
                json!({"email": "bob@example.com", "password": PASSWORD, "is_admin": true}),
                "body",
                "unknown_field",
            ),
            (
                json!({"email": "bob@", "password": PASSWORD}),
                "email",
                "invalid",
            ),
            (
                json!({"email": "", "password": PASSWORD}),
                "email",
                "required",
            ),
        ];
        for (payload, field, code) in cases {
            let r = send(&app, post_json("/v1/users", &payload)).await;
            let body = r.assert_problem(400, "validation_failed");
            assert!(
                field_codes(&body).contains(&(field.into(), code.into())),
                "{payload} → {body}"
            );
            // A mistyped value is never echoed back.
            assert!(!String::from_utf8_lossy(&r.body).contains("12345678"));
        }
        assert_eq!(ctx.count_users().await, 0, "{backend:?}");
    }
}

#[actix_web::test]
async fn malformed_bodies_get_clear_4xx_and_write_nothing() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let raw = |ct: Option<&str>, body: Vec<u8>| {
            let mut req = test::TestRequest::post().uri("/v1/users").set_payload(body);
            if let Some(ct) = ct {
                req = req.insert_header(("content-type", ct));
            }
            req
        };
        let valid = json!({"email": "carol@example.com", "password": PASSWORD})
            .to_string()
            .into_bytes();
        send(
            &app,
            raw(Some("application/json"), b"{\"email\": ".to_vec()),
        )
        .await
        .assert_problem(400, "malformed_request");
        send(&app, raw(Some("application/json"), b"{not json}".to_vec()))
            .await
            .assert_problem(400, "malformed_request");
        send(&app, raw(Some("application/json"), b"[1,2,3]".to_vec()))
            .await
            .assert_problem(400, "malformed_request");
        send(
            &app,
            raw(Some("application/json"), vec![b'"', 0xff, 0xfe, b'"']),
        )
        .await
        .assert_problem(400, "malformed_request");
        send(&app, raw(Some("text/plain"), valid.clone()))
            .await
            .assert_problem(415, "unsupported_media_type");
        send(
            &app,
            raw(
                Some("application/x-www-form-urlencoded"),
                b"email=a&password=b".to_vec(),
            ),
        )
        .await
        .assert_problem(415, "unsupported_media_type");
        send(&app, raw(None, valid.clone()))
            .await
            .assert_problem(415, "unsupported_media_type");
        let mut big = json!({"email": "carol@example.com", "password": PASSWORD, "pad": ""});
        big["pad"] = json!("x".repeat(70 * 1024));
        send(
            &app,
            raw(Some("application/json"), big.to_string().into_bytes()),
        )
        .await
        .assert_problem(413, "payload_too_large");
        send(&app, post_json("/v1/login", &big))
            .await
            .assert_problem(413, "payload_too_large");
        // A field given twice means two things at once: refused, not the last one taken.
        let twice = format!(
            r#"{{"email": "carol@example.com", "password": "{PASSWORD}", "email": "dave@example.com"}}"#
        );
        let body = send(
            &app,
            raw(Some("application/json"), twice.clone().into_bytes()),
        )
        .await
        .assert_problem(400, "malformed_request");
        assert_eq!(body["detail"], "a field is given more than once");
        let login_twice = test::TestRequest::post()
            .uri("/v1/login")
            .insert_header(("content-type", "application/json"))
            .set_payload(twice);
        send(&app, login_twice)
            .await
            .assert_problem(400, "malformed_request");
        assert_eq!(ctx.count_users().await, 0);
        // The same valid body with a charset parameter, and with a +json type, is accepted.
        let r = send(&app, raw(Some("application/json; charset=utf-8"), valid)).await;
        assert_eq!(r.status, 201, "{backend:?}");
    }
}

#[actix_web::test]
async fn login_returns_an_rfc6749_token_response_with_a_verifiable_access_token() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (id, _) = register_and_login(&app, "dana@example.com").await;
        let r = send(
            &app,
            post_json(
                "/v1/login",
                &json!({"email": " DANA@example.com", "password": PASSWORD}),
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("pragma"), Some("no-cache"));
        let body = r.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        assert!(body["refresh_token"].as_str().unwrap().starts_with("tsr_"));
        let token = body["access_token"].as_str().unwrap();

        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let keys = ctx.state.keys.current();
        assert_eq!(
            header.kid.as_deref(),
            ctx.state.keys.active_kid().as_deref()
        );
        let claims = keys.verifier().verify(token).unwrap();
        assert_eq!(claims.sub, id);
        assert_eq!(claims.iss, "https://id.tessera.test");
        assert_eq!(claims.aud, "api");
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.nbf, claims.iat);
        assert!(!claims.jti.is_empty());
        assert!(claims.roles.is_empty());
        assert!(claims.sid.is_some(), "access tokens name their session");

        let id2 = id.clone();
        let events = ctx
            .state
            .db
            .run(move |c| audit::list_for_subject(c, AuditKind::LoginSucceeded, &id2))
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "{backend:?}");
    }
}

#[actix_web::test]
async fn unknown_email_wrong_password_and_disabled_account_get_identical_401s() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (id, _) = register_and_login(&app, "erin@example.com").await;
        register_and_login(&app, "frank@example.com").await;
        ctx.exec("UPDATE users SET disabled = TRUE WHERE email = 'frank@example.com'")
            .await;

        let attempts = [
            json!({"email": "nobody@example.com", "password": PASSWORD}),
            json!({"email": "erin@example.com", "password": "wrong horse battery staple"}),
            json!({"email": "frank@example.com", "password": PASSWORD}),
            json!({"email": "not an email", "password": PASSWORD}),
        ];
        let mut seen = Vec::new();
        for a in &attempts {
            let r = send(&app, post_json("/v1/login", a)).await;
            let mut body = r.assert_problem(401, "invalid_credentials");
            body.as_object_mut().unwrap().remove("request_id");
            let mut headers: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            seen.push((r.status, headers, body));
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "{backend:?}: responses differ: {seen:#?}"
        );
        let events = ctx
            .state
            .db
            .run(move |c| audit::list_for_subject(c, AuditKind::LoginFailed, &id))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }
}

#[actix_web::test]
async fn me_requires_a_valid_token_and_checks_the_account_online() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (id, token) = register_and_login(&app, "gina@example.com").await;

        let r = send(&app, bearer("/v1/me", &token)).await;
        assert_eq!(r.status, 200);
        let me = r.json();
        assert_eq!(me["id"], id.as_str());
        assert_eq!(me["email"], "gina@example.com");
        assert_eq!(me["roles"], json!([]));

        let r = send(&app, get("/v1/me")).await;
        r.assert_problem(401, "missing_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = send(&app, bearer("/v1/me", "not.a.token")).await;
        r.assert_problem(401, "invalid_token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        let r = send(
            &app,
            get("/v1/me").insert_header(("authorization", format!("Basic {token}"))),
        )
        .await;
        r.assert_problem(401, "missing_token");
        // Flip one character of the signature.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        send(&app, bearer("/v1/me", &String::from_utf8(forged).unwrap()))
            .await
            .assert_problem(401, "invalid_token");
        // The scheme is case-insensitive (RFC 6750 §2.1).
        let r = send(
            &app,
            get("/v1/me").insert_header(("authorization", format!("bearer {token}"))),
        )
        .await;
        assert_eq!(r.status, 200);

        // Roles granted later appear in /v1/me at once and in tokens issued after.
        tessera::service::accounts::grant_role(&ctx.state.db, "GINA@example.com", "admin", "test")
            .await
            .unwrap();
        assert_eq!(
            send(&app, bearer("/v1/me", &token)).await.json()["roles"],
            json!(["admin"])
        );
        let fresh = login(&app, "gina@example.com", PASSWORD).await;
        assert_eq!(
            ctx.state
                .keys
                .current()
                .verifier()
                .verify(&fresh)
                .unwrap()
                .roles,
            vec!["admin"]
        );

        // "Tokens issued before T are invalid" and disabling both revoke a verifying token.
        let future = tessera::domain::now() + 5;
        ctx.exec(&format!(
            "UPDATE users SET tokens_valid_after = {future} WHERE id = '{id}'"
        ))
        .await;
        send(&app, bearer("/v1/me", &token))
            .await
            .assert_problem(401, "invalid_token");
        ctx.exec(&format!(
            "UPDATE users SET tokens_valid_after = NULL, disabled = TRUE WHERE id = '{id}'"
        ))
        .await;
        send(&app, bearer("/v1/me", &fresh))
            .await
            .assert_problem(401, "invalid_token");
        ctx.exec(&format!("DELETE FROM users WHERE id = '{id}'"))
            .await;
        send(&app, bearer("/v1/me", &fresh))
            .await
            .assert_problem(401, "invalid_token");
    }
}

#[actix_web::test]
async fn jwks_is_cacheable_and_answers_304_for_its_etag() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let r = send(&app, get("/.well-known/jwks.json")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        let etag = r.header("etag").unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'));
        let jwks = r.json();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let key = &keys[0];
        assert_eq!(
            (
                key["kty"].as_str(),
                key["crv"].as_str(),
                key["alg"].as_str(),
                key["use"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"))
        );
        assert_eq!(key["kid"].as_str(), ctx.state.keys.active_kid().as_deref());
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(key.get(private).is_none());
        }

        for tag in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".into(),
        ] {
            let r = send(
                &app,
                get("/.well-known/jwks.json").insert_header(("if-none-match", tag.as_str())),
            )
            .await;
            assert_eq!(r.status, 304, "{tag}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), Some(etag.as_str()));
        }
        let r = send(
            &app,
            get("/.well-known/jwks.json").insert_header(("if-none-match", "\"stale\"")),
        )
        .await;
        assert_eq!(r.status, 200);
        // HEAD answers like GET, with the same validator, for caches that revalidate.
        let r = send(
            &app,
            test::TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri("/.well-known/jwks.json"),
        )
        .await;
        assert_eq!(r.status, 200, "{backend:?}: HEAD on the JWKS");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));

        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let meta = send(&app, get(path)).await.json();
            assert_eq!(meta["issuer"], "https://id.tessera.test");
            assert_eq!(
                meta["jwks_uri"],
                "https://id.tessera.test/.well-known/jwks.json"
            );
            assert!(meta["id_token_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("ES256")));
        }
    }
}

#[actix_web::test]
async fn eddsa_keys_sign_when_configured() {
    let db = TestDb::new(Backend::Sqlite);
    let mut s = settings(&db, &new_kek());
    s.keys.algorithm = "EdDSA".into();
    let state = tessera::startup::build_state(s).await.unwrap();
    let app = test::init_service(api::app(state.clone())).await;
    let (_, token) = register_and_login(&app, "hana@example.com").await;
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    assert_eq!(send(&app, bearer("/v1/me", &token)).await.status, 200);
    let jwks = send(&app, get("/.well-known/jwks.json")).await.json();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
}

#[actix_web::test]
async fn health_and_readiness_report_their_checks() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let r = send(&app, get("/healthz")).await;
        assert_eq!(
            (r.status.as_u16(), r.json()["status"].as_str()),
            (200, Some("ok"))
        );
        let r = send(&app, get("/readyz")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({"status": "ready", "checks": {"database": "ok", "signing_key": "ok", "revocation_list": "memory", "rate_limits": "memory"}})
        );
    }
}

#[actix_web::test]
async fn metrics_count_hashes_and_shed_requests_in_prometheus_text() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "met@example.com").await;
    let r = send(&app, get("/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    // The registration and the login (the start-up dummy hash is made outside the pool).
    assert_eq!(value("tessera_password_hashes_total"), 2, "{text}");
    assert_eq!(value("tessera_password_hash_shed_total"), 0);
    assert_eq!(value("tessera_rate_limit_fallback"), 0);
    assert_eq!(value("tessera_signing_key_present"), 1);
    assert!(text.contains("# TYPE tessera_password_hashes_total counter"));
}

#[actix_web::test]
async fn readiness_fails_when_the_database_goes_away_and_recovers() {
    // PostgreSQL refuses this database's connections for a while under the running service.
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let db = TestDb::new(Backend::Postgres);
    let state = tessera::startup::build_state(settings(&db, &new_kek()))
        .await
        .unwrap();
    let app = test::init_service(api::app(state.clone())).await;
    assert_eq!(send(&app, get("/readyz")).await.status, 200);
    let name = url::Url::parse(&db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    // Terminate every connection of this test database and forbid new ones.
    let mut admin =
        <diesel::pg::PgConnection as diesel::Connection>::establish(&pg_admin_url()).unwrap();
    use diesel::RunQueryDsl;
    diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .unwrap();
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .unwrap();
    let r = send(&app, get("/readyz")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["checks"]["database"], "unavailable");
    let r = send(
        &app,
        post_json(
            "/v1/users",
            &json!({"email": "ivan@example.com", "password": PASSWORD}),
        ),
    )
    .await;
    let body = r.assert_problem(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(!body.to_string().contains("postgres"), "{body}");
    diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if send(&app, get("/readyz")).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "readiness must recover without a restart");
    let r = send(
        &app,
        post_json(
            "/v1/users",
            &json!({"email": "ivan@example.com", "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(r.status, 201);
}

#[actix_web::test]
async fn every_response_carries_security_headers_and_a_request_id() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    let requests = [
        get("/healthz"),
        get("/nope"),
        get("/v1/users"),
        get("/v1/me"),
        get("/.well-known/jwks.json"),
        post_json(
            "/v1/login",
            &json!({"email": "x@example.com", "password": "x"}),
        ),
    ];
    for req in requests {
        let r = send(&app, req).await;
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert!(r
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'"));
        assert!(
            r.header("strict-transport-security").is_some(),
            "https issuer ⇒ HSTS"
        );
        assert_eq!(
            uuid::Uuid::parse_str(r.header("x-request-id").unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
    }
    let r = send(&app, get("/nope")).await;
    r.assert_problem(404, "not_found");
    let r = send(&app, get("/v1/users")).await;
    r.assert_problem(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(
        &app,
        test::TestRequest::delete().uri("/.well-known/jwks.json"),
    )
    .await;
    r.assert_problem(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = send(
        &app,
        test::TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri("/v1/login"),
    )
    .await;
    r.assert_problem(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    // A caller's request id is echoed; an unsafe one is replaced.
    let r = send(
        &app,
        get("/healthz").insert_header(("x-request-id", "trace-abc.123")),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("trace-abc.123"));
    let r = send(
        &app,
        get("/healthz").insert_header(("x-request-id", "bad id\"<script>")),
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("bad id\"<script>"));
    // Problem bodies carry the same id as the header.
    let r = send(&app, get("/nope").insert_header(("x-request-id", "req-42"))).await;
    assert_eq!(r.json()["request_id"], "req-42");
}

#[actix_web::test]
async fn a_panicking_handler_answers_500_and_the_app_keeps_serving() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    async fn boom() -> HttpResponse {
        panic!("deliberate test panic")
    }
    let settings = ctx.settings();
    let app = test::init_service(
        App::new()
            .configure(api::configure(ctx.state.clone()))
            .service(api::resource("/boom", "GET").route(web::get().to(boom)))
            .wrap(actix_web::middleware::from_fn(
                api::middleware::request_context,
            ))
            .wrap(api::middleware::security_headers(&settings)),
    )
    .await;
    for _ in 0..3 {
        let r = send(
            &app,
            get("/boom").insert_header(("x-request-id", "req-boom")),
        )
        .await;
        let body = r.assert_problem(500, "internal_error");
        assert_eq!(body["request_id"], "req-boom");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("deliberate"),
            "no panic message in the body"
        );
        assert_eq!(r.header("x-request-id"), Some("req-boom"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(send(&app, get("/healthz")).await.status, 200);
}

#[actix_web::test]
async fn a_login_rehashes_a_password_stored_with_old_parameters() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (id, _) = register_and_login(&app, "jack@example.com").await;
        let stored = |state: tessera::api::AppState, id: String| async move {
            state
                .db
                .run(move |c| tessera::store::users::find(c, &id))
                .await
                .unwrap()
                .unwrap()
                .password_hash
        };
        let before = stored(ctx.state.clone(), id.clone()).await;
        assert!(before.contains("m=256,t=1,p=1"), "{before}");

        let mut stronger = ctx.settings();
        stronger.password.memory_kib = 512;
        stronger.password.iterations = 2;
        let state2 = tessera::startup::build_state(stronger).await.unwrap();
        let app2 = test::init_service(api::app(state2.clone())).await;
        login(&app2, "jack@example.com", PASSWORD).await;
        let after = stored(state2.clone(), id.clone()).await;
        assert!(after.contains("m=512,t=2,p=1"), "{backend:?}: {after}");
        // The new hash still verifies, and a wrong password still fails.
        login(&app2, "jack@example.com", PASSWORD).await;
        let r = send(
            &app2,
            post_json(
                "/v1/login",
                &json!({"email": "jack@example.com", "password": "nope nope nope"}),
            ),
        )
        .await;
        r.assert_problem(401, "invalid_credentials");

        // Concurrent logins that each want to store a rehash: every one succeeds (the ones
        // that find the hash already replaced check the password again against the new
        // one), none deadlocks, and none counts as a failed login.
        let mut strongest = ctx.settings();
        strongest.password.memory_kib = 1024;
        strongest.password.iterations = 2;
        let state3 = tessera::startup::build_state(strongest).await.unwrap();
        let app3 = test::init_service(api::app(state3.clone())).await;
        let failed_before = events(&state3, AuditKind::LoginFailed, &id).await.len();
        let attempts = (0..6).map(|_| {
            send(
                &app3,
                post_json(
                    "/v1/login",
                    &json!({"email": "jack@example.com", "password": PASSWORD}),
                ),
            )
        });
        for r in futures_util::future::join_all(attempts).await {
            assert_eq!(
                r.status,
                200,
                "{backend:?}: a concurrent login with the right password: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let last = stored(state3.clone(), id.clone()).await;
        assert!(last.contains("m=1024,t=2,p=1"), "{backend:?}: {last}");
        assert_eq!(
            events(&state3, AuditKind::LoginFailed, &id).await.len(),
            failed_before,
            "{backend:?}: no login_failed event for a right password"
        );
    }
}

#[actix_web::test]
async fn keys_and_users_survive_a_restart_and_a_wrong_kek_refuses_to_start() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (_, token) = register_and_login(&app, "kate@example.com").await;
        let kid = ctx.state.keys.active_kid().unwrap();

        // A second process on the same database and KEK: same key, old token still valid.
        let again = tessera::startup::build_state(ctx.settings()).await.unwrap();
        assert_eq!(again.keys.active_kid().unwrap(), kid);
        let app2 = test::init_service(api::app(again.clone())).await;
        assert_eq!(send(&app2, bearer("/v1/me", &token)).await.status, 200);
        login(&app2, "kate@example.com", PASSWORD).await;

        let wrong = new_kek();
        let mut s = ctx.settings();
        s.keys.kek = Some(secrecy::SecretString::from(wrong.clone()));
        let err = match tessera::startup::build_state(s).await {
            Ok(_) => panic!("{backend:?}: a wrong KEK must refuse to start"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("KEK") && err.contains(&kid), "{err}");
        assert!(
            !err.contains(&wrong) && !err.contains(&ctx.kek),
            "the message must not print a KEK: {err}"
        );
    }
}

#[actix_web::test]
async fn a_tampered_sealed_key_fails_clearly() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    // Flip bytes inside the ciphertext while keeping the KEK id: AES-GCM must refuse it.
    ctx.exec("UPDATE signing_keys SET private_key_sealed = X'00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011'").await;
    let err = match tessera::startup::build_state(ctx.settings()).await {
        Ok(_) => panic!("a tampered key must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not open"), "{err}");
}

#[actix_web::test]
async fn migrations_are_idempotent_and_grant_role_validates_its_input() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        assert!(
            tessera::store::migrate(&ctx.db.url).unwrap().is_empty(),
            "already applied at start-up"
        );
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "liam@example.com").await;
        let db = &ctx.state.db;
        use tessera::service::accounts::grant_role;
        assert!(grant_role(db, "liam@example.com", "admin", "test")
            .await
            .unwrap());
        assert!(
            !grant_role(db, "Liam@Example.com", "admin", "test")
                .await
                .unwrap(),
            "granting twice is a no-op"
        );
        assert!(matches!(
            grant_role(db, "nobody@example.com", "admin", "test").await,
            Err(tessera::service::AccountError::Invalid(_))
        ));
        assert!(matches!(
            grant_role(db, "liam@example.com", "Not A Role", "test").await,
            Err(tessera::service::AccountError::Invalid(_))
        ));
    }
}

#[actix_web::test]
async fn a_login_flood_beyond_the_hashing_queue_is_shed_with_503_not_queued() {
    let db = TestDb::new(Backend::Sqlite);
    let mut s = settings(&db, &new_kek());
    // One slow hashing thread behind a two-slot queue.
    s.password.memory_kib = 8 * 1024;
    s.password.iterations = 3;
    s.password.threads = 1;
    s.password.queue = 2;
    let state = tessera::startup::build_state(s).await.unwrap();
    let app = test::init_service(api::app(state.clone())).await;
    register_and_login(&app, "mia@example.com").await;
    let flood = (0..24).map(|i| {
        let password = if i % 2 == 0 {
            PASSWORD
        } else {
            "wrong password here"
        };
        send(
            &app,
            post_json(
                "/v1/login",
                &json!({"email": "mia@example.com", "password": password}),
            ),
        )
    });
    let replies = futures_util::future::join_all(flood).await;
    let shed: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        !shed.is_empty(),
        "a 2-slot queue cannot admit 24 concurrent logins"
    );
    for r in &shed {
        r.assert_problem(503, "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Which requests win a queue slot depends on scheduling; each admitted one gets the
    // answer its password deserves, and at least one is admitted.
    for (i, r) in replies.iter().enumerate() {
        let expected = if i % 2 == 0 { 200 } else { 401 };
        assert!(
            r.status == expected || r.status == 503,
            "request {i}: {}",
            r.status
        );
    }
    assert!(
        replies.iter().any(|r| r.status != 503),
        "admitted logins complete"
    );
    // Registration shares the pool and is shed the same way; nothing half-written.
    let regs = (0..12).map(|i| {
        send(
            &app,
            post_json(
                "/v1/users",
                &json!({"email": format!("user{i}@example.com"), "password": PASSWORD}),
            ),
        )
    });
    let replies = futures_util::future::join_all(regs).await;
    let created = replies.iter().filter(|r| r.status == 201).count() as i64;
    assert!(replies
        .iter()
        .all(|r| matches!(r.status.as_u16(), 201 | 503)));
    let users = state.db.run(tessera::store::users::count).await.unwrap();
    assert_eq!(
        users,
        1 + created,
        "only admitted registrations were written"
    );
}

#[actix_web::test]
async fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    use std::io::{Read, Write};
    let ctx = Ctx::new(Backend::Sqlite).await;
    let mut settings = ctx.settings();
    settings.server.bind = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.workers = 1;
    let application = tessera::startup::Application::build(settings)
        .await
        .unwrap();
    let addr = application.local_addr();
    let server = actix_web::rt::spawn(application.run_until_stopped());
    // A client announces 100 bytes and sends 2: the server answers once the body deadline
    // passes (the socket timeout only keeps a broken server from hanging the test).
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        s.write_all(
            b"POST /v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"",
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body gets 408: {answer}"
    );
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert_eq!(ctx.count_users().await, 0, "nothing was written");
    server.abort();
}
