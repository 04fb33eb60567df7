//! Sessions and revocation, in both deployment shapes: embedded (SQLite + in-process
//! mirror) and cluster (PostgreSQL + Redis, each test with its own key prefix).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_web::test;
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use tessera::api;
use tessera::domain::ManualClock;
use tessera::store::audit::{self, AuditKind};

#[actix_web::test]
async fn refresh_rotates_and_a_concurrent_reuse_inside_the_grace_window_keeps_the_family() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |_| {}).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "ann@example.com").await;
        let (_, rt1) = login_pair(&app, "ann@example.com", PASSWORD).await;

        let r = refresh(&app, &rt1).await;
        assert_eq!(
            r.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let body = r.json();
        let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rt2, rt1);
        let access = body["access_token"].as_str().unwrap();
        assert_eq!(send(&app, bearer("/v1/me", access)).await.status, 200);
        let claims = ctx.state.keys.current().verifier().verify(access).unwrap();

        // The same token again, within the grace window: refused, family intact.
        refresh(&app, &rt1).await.assert_oauth(400, "invalid_grant");
        let r = refresh(&app, &rt2).await;
        assert_eq!(
            r.status, 200,
            "{backend:?}: the family survives a reuse inside the grace window"
        );
        let rt3 = r.json()["refresh_token"].as_str().unwrap().to_owned();
        let fresh = ctx
            .state
            .keys
            .current()
            .verifier()
            .verify(r.json()["access_token"].as_str().unwrap())
            .unwrap();
        assert_eq!(fresh.sid, claims.sid, "one session across rotations");

        // Two concurrent refreshes of one token: exactly one new pair, the family lives on.
        let (a, b) = futures_util::future::join(refresh(&app, &rt3), refresh(&app, &rt3)).await;
        let winners: Vec<_> = [&a, &b].into_iter().filter(|r| r.status == 200).collect();
        assert_eq!(winners.len(), 1, "{backend:?}: {} / {}", a.status, b.status);
        let loser = if a.status == 200 { &b } else { &a };
        loser.assert_oauth(400, "invalid_grant");
        let rt4 = winners[0].json()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(refresh(&app, &rt4).await.status, 200);
    }
}

#[actix_web::test]
async fn reuse_after_the_grace_window_revokes_the_whole_family_and_is_audited() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |s| s.sessions.reuse_grace = Duration::ZERO).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (user_id, _) = register_and_login(&app, "bo@example.com").await;
        let (_, rt1) = login_pair(&app, "bo@example.com", PASSWORD).await;
        let (other_access, other_rt) = login_pair(&app, "bo@example.com", PASSWORD).await;
        let r = refresh(&app, &rt1).await;
        let rt2 = r.json()["refresh_token"].as_str().unwrap().to_owned();
        let access2 = r.json()["access_token"].as_str().unwrap().to_owned();

        // An attacker replays the stolen, already-rotated token.
        refresh(&app, &rt1).await.assert_oauth(400, "invalid_grant");
        // The whole family is dead: the legitimate holder's newer token, and its access token.
        refresh(&app, &rt2).await.assert_oauth(400, "invalid_grant");
        send(&app, bearer("/v1/me", &access2))
            .await
            .assert_problem(401, "invalid_token");
        // Another session of the same user is untouched.
        assert_eq!(
            send(&app, bearer("/v1/me", &other_access)).await.status,
            200
        );
        assert_eq!(refresh(&app, &other_rt).await.status, 200);
        let events = ctx
            .state
            .db
            .run(move |c| audit::list_for_subject(c, AuditKind::RefreshReuse, &user_id))
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{backend:?}");
    }
}

#[actix_web::test]
async fn refresh_tokens_expire_when_idle_and_at_the_absolute_limit() {
    for (backend, redis) in shapes().await {
        let clock = Arc::new(ManualClock::new(tessera::domain::now()));
        let db = TestDb::new(backend);
        let kek = new_kek();
        let mut s = shape_settings(&db, &kek, redis);
        s.sessions.refresh_idle_ttl = Duration::from_secs(3600);
        s.sessions.refresh_absolute_ttl = Duration::from_secs(3 * 3600);
        let state = tessera::startup::build_state_with_clock(s, clock.clone())
            .await
            .unwrap();
        let app = test::init_service(api::app(state.clone())).await;
        register_and_login(&app, "cy@example.com").await;

        let (_, idle) = login_pair(&app, "cy@example.com", PASSWORD).await;
        clock.advance(3600);
        refresh(&app, &idle)
            .await
            .assert_oauth(400, "invalid_grant");

        let (_, mut rt) = login_pair(&app, "cy@example.com", PASSWORD).await;
        for _ in 0..5 {
            clock.advance(3000);
            let r = refresh(&app, &rt).await;
            if r.status != 200 {
                r.assert_oauth(400, "invalid_grant");
                break;
            }
            rt = r.json()["refresh_token"].as_str().unwrap().to_owned();
        }
        // 3 h absolute: refreshed at +50 min, +100 min, +150 min; +200 min is past the limit.
        refresh(&app, &rt).await.assert_oauth(400, "invalid_grant");
    }
}

#[actix_web::test]
async fn malformed_token_requests_get_oauth_errors_never_500() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "dee@example.com").await;
    let (_, rt) = login_pair(&app, "dee@example.com", PASSWORD).await;
    let long = format!("tsr_{}", "A".repeat(60_000));
    let cases = [
        "tsr_short".to_owned(),
        rt[..rt.len() - 1].to_owned(),
        format!("ghp_{}", &rt[4..]),
        long.clone(),
        "".to_owned(),
        format!("{rt}%00"),
        "tsr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    ];
    for bad in &cases {
        let r = send(
            &app,
            post_form(
                "/v1/token",
                &format!("grant_type=refresh_token&refresh_token={bad}"),
            ),
        )
        .await;
        assert!(
            matches!(r.status.as_u16(), 400 | 413),
            "{bad:.20}: {}",
            r.status
        );
        assert_ne!(r.status, 500);
        let body = r.json();
        assert!(
            matches!(
                body["error"].as_str(),
                Some("invalid_grant" | "invalid_request")
            ),
            "{body}"
        );
    }
    send(&app, post_form("/v1/token", "refresh_token=x"))
        .await
        .assert_oauth(400, "invalid_request");
    send(
        &app,
        post_form("/v1/token", "grant_type=password&username=a&password=b"),
    )
    .await
    .assert_oauth(400, "unsupported_grant_type");
    send(
        &app,
        post_form(
            "/v1/token",
            &format!("grant_type=refresh_token&refresh_token={rt}&refresh_token={rt}"),
        ),
    )
    .await
    .assert_oauth(400, "invalid_request");
    let json_body = post_json(
        "/v1/token",
        &json!({"grant_type": "refresh_token", "refresh_token": rt}),
    );
    send(&app, json_body)
        .await
        .assert_oauth(415, "invalid_request");
    send(&app, post_form("/v1/revoke", ""))
        .await
        .assert_oauth(400, "invalid_request");
    // None of that touched the real token.
    assert_eq!(refresh(&app, &rt).await.status, 200);
}

/// The TTL of a Redis key, if it exists.
async fn ttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<i64> {
    let t: i64 = conn.ttl(key).await.unwrap();
    (t > 0).then_some(t)
}

#[actix_web::test]
async fn logout_revoke_and_password_change_each_kill_the_old_access_token_and_spare_other_users() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |_| {}).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "eve@example.com").await;
        let (bystander, bystander_rt) = register_and_login(&app, "fay@example.com").await;
        let _ = bystander;
        let bystander_access = login(&app, "fay@example.com", PASSWORD).await;

        // Logout: the presented token and its family.
        let (access, rt) = login_pair(&app, "eve@example.com", PASSWORD).await;
        let r = send(&app, post("/v1/logout", &access)).await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        send(&app, bearer("/v1/me", &access))
            .await
            .assert_problem(401, "invalid_token");
        refresh(&app, &rt).await.assert_oauth(400, "invalid_grant");
        let jti = ctx
            .state
            .keys
            .current()
            .verifier()
            .verify(&access)
            .map(|c| c.jti);
        let claims_jti = match jti {
            Ok(j) => j,
            Err(_) => panic!("token still verifies offline; only the list revokes it"),
        };
        if redis {
            let mut conn = ctx.redis().await;
            let left = ttl(
                &mut conn,
                &format!("{}revoked:jti:{claims_jti}", ctx.prefix()),
            )
            .await
            .unwrap();
            assert!(
                (800..=930).contains(&left),
                "{backend:?}: the entry lives until the token expires plus the leeway: {left}"
            );
        }

        // RFC 7009 revoke of an access token, and of a refresh token (its family).
        let (access, rt) = login_pair(&app, "eve@example.com", PASSWORD).await;
        let r = send(
            &app,
            post_form(
                "/v1/revoke",
                &format!("token={access}&token_type_hint=access_token"),
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        send(&app, bearer("/v1/me", &access))
            .await
            .assert_problem(401, "invalid_token");
        assert_eq!(
            send(&app, post_form("/v1/revoke", &format!("token={rt}")))
                .await
                .status,
            200
        );
        refresh(&app, &rt).await.assert_oauth(400, "invalid_grant");
        assert_eq!(
            send(&app, post_form("/v1/revoke", "token=garbage"))
                .await
                .status,
            200,
            "unknown tokens are not an error"
        );

        // Password change: every other session ends; this one refreshes into a valid token.
        let (old_access, old_rt) = login_pair(&app, "eve@example.com", PASSWORD).await;
        let (access, rt) = login_pair(&app, "eve@example.com", PASSWORD).await;
        let change = |current: &str, new: &str| {
            post("/v1/password", &access)
                .insert_header(("content-type", "application/json"))
                .set_payload(json!({"current_password": current, "new_password": new}).to_string())
        };
        let body = send(
            &app,
            change("wrong password here", "another strong passphrase 77"),
        )
        .await
        .assert_problem(400, "validation_failed");
        assert_eq!(body["errors"][0]["field"], "current_password");
        let body = send(&app, change(PASSWORD, "short"))
            .await
            .assert_problem(400, "validation_failed");
        assert_eq!(body["errors"][0]["field"], "new_password");
        // Tokens from the second before the change must differ from tokens after it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            send(&app, change(PASSWORD, "another strong passphrase 77"))
                .await
                .status,
            204
        );
        send(&app, bearer("/v1/me", &old_access))
            .await
            .assert_problem(401, "invalid_token");
        send(&app, bearer("/v1/me", &access))
            .await
            .assert_problem(401, "invalid_token");
        refresh(&app, &old_rt)
            .await
            .assert_oauth(400, "invalid_grant");
        let r = refresh(&app, &rt).await;
        assert_eq!(
            r.status, 200,
            "{backend:?}: the session that changed the password continues"
        );
        assert_eq!(
            send(
                &app,
                bearer("/v1/me", r.json()["access_token"].as_str().unwrap())
            )
            .await
            .status,
            200
        );
        let r = send(
            &app,
            post_json(
                "/v1/login",
                &json!({"email": "eve@example.com", "password": PASSWORD}),
            ),
        )
        .await;
        r.assert_problem(401, "invalid_credentials");
        login(&app, "eve@example.com", "another strong passphrase 77").await;
        if redis {
            let user_id = ctx
                .state
                .keys
                .current()
                .verifier()
                .verify(&old_access)
                .unwrap()
                .sub;
            let mut conn = ctx.redis().await;
            let left = ttl(
                &mut conn,
                &format!("{}revoked:user:{user_id}", ctx.prefix()),
            )
            .await
            .unwrap();
            assert!(
                (900..=930).contains(&left),
                "{backend:?}: a user mark lives one token lifetime: {left}"
            );
        }

        // The bystander never noticed.
        assert_eq!(
            send(&app, bearer("/v1/me", &bystander_access)).await.status,
            200
        );
        let _ = bystander_rt;
    }
}

#[actix_web::test]
async fn logout_everywhere_ends_every_session() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |_| {}).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "gus@example.com").await;
        let (a1, r1) = login_pair(&app, "gus@example.com", PASSWORD).await;
        let (a2, r2) = login_pair(&app, "gus@example.com", PASSWORD).await;
        assert_eq!(
            send(&app, post("/v1/logout?everywhere=true", &a1))
                .await
                .status,
            204
        );
        for a in [&a1, &a2] {
            send(&app, bearer("/v1/me", a))
                .await
                .assert_problem(401, "invalid_token");
        }
        for r in [&r1, &r2] {
            refresh(&app, r).await.assert_oauth(400, "invalid_grant");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fresh = login(&app, "gus@example.com", PASSWORD).await;
        assert_eq!(
            send(&app, bearer("/v1/me", &fresh)).await.status,
            200,
            "{backend:?}: a new login works"
        );
    }
}

/// Deletes every key of this test's prefix: what FLUSHALL does to it, without disturbing
/// tests running beside it.
async fn flush_prefix(ctx: &Ctx) {
    let mut conn = ctx.redis().await;
    let keys: Vec<String> = conn.keys(format!("{}*", ctx.prefix())).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

#[actix_web::test]
async fn a_flushed_redis_never_makes_a_revoked_token_valid_and_is_republished() {
    if !(backends().contains(&Backend::Postgres) && redis_available().await) {
        return;
    }
    let ctx = Ctx::shaped(Backend::Postgres, true, |_| {}).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "hal@example.com").await;
    let (access, _) = login_pair(&app, "hal@example.com", PASSWORD).await;
    assert_eq!(send(&app, post("/v1/logout", &access)).await.status, 204);
    ctx.state.revocations.maintain().await.unwrap();
    let jti = ctx
        .state
        .keys
        .current()
        .verifier()
        .verify(&access)
        .unwrap()
        .jti;
    let key = format!("{}revoked:jti:{jti}", ctx.prefix());
    let mut conn = ctx.redis().await;
    assert!(conn.exists::<_, bool>(&key).await.unwrap());

    flush_prefix(&ctx).await;
    // At once: Redis no longer has the `ready` key, so the database answers.
    send(&app, bearer("/v1/me", &access))
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(
        send(&app, get("/readyz")).await.json()["checks"]["revocation_list"],
        "rebuilding"
    );
    // The upkeep re-publishes from the database.
    ctx.state.revocations.maintain().await.unwrap();
    assert!(conn.exists::<_, bool>(&key).await.unwrap(), "re-published");
    assert_eq!(
        send(&app, get("/readyz")).await.json()["checks"]["revocation_list"],
        "ok"
    );
    send(&app, bearer("/v1/me", &access))
        .await
        .assert_problem(401, "invalid_token");

    // A restarted Tessera (a new process on the same database and Redis) still refuses it.
    flush_prefix(&ctx).await;
    let mut s = ctx.settings();
    s.redis = ctx.state.settings.redis.clone();
    let restarted = tessera::startup::build_state(s).await.unwrap();
    let app2 = test::init_service(api::app(restarted.clone())).await;
    send(&app2, bearer("/v1/me", &access))
        .await
        .assert_problem(401, "invalid_token");
    assert!(
        conn.exists::<_, bool>(&key).await.unwrap(),
        "a new process re-publishes at start"
    );
}

#[actix_web::test]
async fn with_redis_stopped_everything_keeps_working_on_the_database_and_recovers_without_restart()
{
    if !OwnRedis::available() {
        return;
    }
    let port = OwnRedis::free_port();
    let mut own = OwnRedis::start(port).expect("start a private redis-server");
    let backend = if backends().contains(&Backend::Postgres) {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let ctx = Ctx::shaped(backend, true, |s| {
        s.redis.url = Some(format!("redis://127.0.0.1:{port}"))
    })
    .await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "ida@example.com").await;
    let (revoked, _) = login_pair(&app, "ida@example.com", PASSWORD).await;
    assert_eq!(send(&app, post("/v1/logout", &revoked)).await.status, 204);
    ctx.state.revocations.maintain().await.unwrap();
    assert_eq!(
        send(&app, get("/readyz")).await.json()["checks"]["revocation_list"],
        "ok"
    );

    own.stop();
    // Login, refresh and /v1/me keep working; the revoked token stays revoked.
    let (access, rt) = login_pair(&app, "ida@example.com", PASSWORD).await;
    assert_eq!(send(&app, bearer("/v1/me", &access)).await.status, 200);
    send(&app, bearer("/v1/me", &revoked))
        .await
        .assert_problem(401, "invalid_token");
    let r = refresh(&app, &rt).await;
    assert_eq!(r.status, 200);
    let r = send(&app, get("/readyz")).await;
    assert_eq!(r.status, 200, "degraded, not down");
    assert_eq!(r.json()["status"], "degraded");
    assert_eq!(r.json()["checks"]["revocation_list"], "unavailable");
    // A revocation made during the outage is durable and enforced.
    let (during, _) = login_pair(&app, "ida@example.com", PASSWORD).await;
    assert_eq!(send(&app, post("/v1/logout", &during)).await.status, 204);
    send(&app, bearer("/v1/me", &during))
        .await
        .assert_problem(401, "invalid_token");

    // Redis comes back empty: re-published, healthy again, both tokens still refused.
    let _own2 = OwnRedis::start(port).expect("restart the private redis-server");
    let mut recovered = false;
    for _ in 0..100 {
        let _ = ctx.state.revocations.maintain().await;
        let _ = send(&app, bearer("/v1/me", &access)).await;
        if send(&app, get("/readyz")).await.json()["checks"]["revocation_list"] == "ok" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the mirror recovers without a restart");
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let during_jti = ctx
        .state
        .keys
        .current()
        .verifier()
        .verify(&during)
        .unwrap()
        .jti;
    assert!(
        conn.exists::<_, bool>(format!("{}revoked:jti:{during_jti}", ctx.prefix()))
            .await
            .unwrap(),
        "the outage's revocation reached Redis"
    );
    send(&app, bearer("/v1/me", &revoked))
        .await
        .assert_problem(401, "invalid_token");
    send(&app, bearer("/v1/me", &during))
        .await
        .assert_problem(401, "invalid_token");
}

#[actix_web::test]
async fn concurrent_refreshes_of_different_sessions_all_succeed_on_sqlite() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "kim@example.com").await;
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(login_pair(&app, "kim@example.com", PASSWORD).await.1);
    }
    for _round in 0..3 {
        let replies = futures_util::future::join_all(tokens.iter().map(|t| refresh(&app, t))).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "writers wait for each other instead of failing: {statuses:?}"
        );
        tokens = replies
            .iter()
            .map(|r| r.json()["refresh_token"].as_str().unwrap().to_owned())
            .collect();
    }
    let revokes = futures_util::future::join_all(
        tokens
            .iter()
            .map(|t| send(&app, post_form("/v1/revoke", &format!("token={t}")))),
    )
    .await;
    assert!(revokes.iter().all(|r| r.status == 200));
}

#[actix_web::test]
async fn a_revocation_outlives_its_token_by_the_leeway() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let now = tessera::domain::now();
        // Leeway is 30 s: a token that expired 10 s ago is still accepted by verifiers, so
        // its revocation must stay; one that expired 40 s ago is gone for everybody.
        ctx.exec(&format!("INSERT INTO revoked_tokens (jti, user_id, expires_at, revoked_at) VALUES ('recent', 'u', {}, {now})", now - 10)).await;
        ctx.exec(&format!("INSERT INTO revoked_tokens (jti, user_id, expires_at, revoked_at) VALUES ('old', 'u', {}, {now})", now - 40)).await;
        assert_eq!(
            ctx.state.revocations.prune().await.unwrap(),
            1,
            "{backend:?}"
        );
        assert!(ctx
            .state
            .revocations
            .is_revoked("recent", "u", now - 900)
            .await
            .unwrap());
        assert!(!ctx
            .state
            .revocations
            .is_revoked("old", "u", now - 900)
            .await
            .unwrap());
    }
}

#[actix_web::test]
async fn a_revoked_token_cannot_log_the_user_out_everywhere() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |_| {}).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "lou@example.com").await;
        let (stolen, _) = login_pair(&app, "lou@example.com", PASSWORD).await;
        let (other, other_rt) = login_pair(&app, "lou@example.com", PASSWORD).await;
        assert_eq!(send(&app, post("/v1/logout", &stolen)).await.status, 204);
        send(&app, post("/v1/logout?everywhere=true", &stolen))
            .await
            .assert_problem(401, "invalid_token");
        assert_eq!(
            send(&app, bearer("/v1/me", &other)).await.status,
            200,
            "{backend:?}"
        );
        assert_eq!(refresh(&app, &other_rt).await.status, 200);
    }
}

#[actix_web::test]
async fn guessing_the_current_password_is_rate_limited() {
    let ctx = Ctx::shaped(Backend::Sqlite, false, |s| {
        s.rate_limits.enabled = true;
        s.rate_limits.login_per_account = "5/5m".into();
    })
    .await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    let (_, access) = register_and_login(&app, "max@example.com").await;
    let guess = || {
        post("/v1/password", &access)
            .insert_header(("content-type", "application/json"))
            .set_payload(json!({"current_password": "a wrong guess here", "new_password": "another strong passphrase 77"}).to_string())
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(send(&app, guess()).await.status.as_u16());
    }
    assert_eq!(statuses, vec![400, 400, 400, 400, 400, 429, 429]);
}

#[actix_web::test]
async fn a_second_tab_inside_the_grace_window_does_not_clear_the_fresh_cookie() {
    let ctx = Ctx::shaped(Backend::Sqlite, false, |s| {
        s.cookies.refresh_cookie = true;
        s.cors.allowed_origins = "http://app.test".into();
    })
    .await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    register_and_login(&app, "ned@example.com").await;
    let r = send(&app, login_req_from_browser("ned@example.com")).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("refresh_token").is_none());
    let cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/v1/token"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_owned();
    let browser_refresh = || {
        post_form("/v1/token", "grant_type=refresh_token")
            .insert_header(("origin", "http://app.test"))
            .insert_header(("x-tessera-csrf", "1"))
            .insert_header(("cookie", value.clone()))
    };
    let tab_a = send(&app, browser_refresh()).await;
    assert_eq!(tab_a.status, 200);
    assert!(tab_a
        .header("set-cookie")
        .unwrap()
        .starts_with("tessera_refresh=tsr_"));
    let tab_b = send(&app, browser_refresh()).await;
    tab_b.assert_oauth(400, "invalid_grant");
    assert!(
        tab_b.header("set-cookie").is_none(),
        "tab A's fresh cookie must survive tab B's refusal"
    );
    // Without the CSRF header, or from another origin, a cookie refresh is refused.
    let no_csrf = post_form("/v1/token", "grant_type=refresh_token")
        .insert_header(("origin", "http://app.test"))
        .insert_header(("cookie", value.clone()));
    send(&app, no_csrf)
        .await
        .assert_oauth(403, "invalid_request");
    let foreign = post_form("/v1/token", "grant_type=refresh_token")
        .insert_header(("origin", "http://evil.test"))
        .insert_header(("x-tessera-csrf", "1"))
        .insert_header(("cookie", value.clone()));
    send(&app, foreign)
        .await
        .assert_oauth(403, "invalid_request");
}

fn login_req_from_browser(email: &str) -> test::TestRequest {
    post_json("/v1/login", &json!({"email": email, "password": PASSWORD}))
        .insert_header(("origin", "http://app.test"))
}

/// The refresh path in one statement (PostgreSQL) and in two steps (SQLite) must agree on
/// what a refreshed token carries and on what it refuses.
#[actix_web::test]
async fn a_refresh_carries_the_current_roles_and_a_disabled_account_cannot_refresh() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |_| {}).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (id, _) = register_and_login(&app, "lou@example.com").await;
        let (_, rt1) = login_pair(&app, "lou@example.com", PASSWORD).await;
        let verify = |r: &Reply| {
            ctx.state
                .keys
                .current()
                .verifier()
                .verify(r.json()["access_token"].as_str().unwrap())
                .unwrap()
        };

        // No roles: an empty list, not an error.
        let r = refresh(&app, &rt1).await;
        assert_eq!(
            r.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(verify(&r).roles.is_empty(), "{backend:?}");
        let rt2 = r.json()["refresh_token"].as_str().unwrap().to_owned();

        // Roles granted after login show up at the next refresh, sorted.
        ctx.exec(&format!(
            "INSERT INTO user_roles (user_id, role, granted_at) VALUES ('{id}', 'support', 1), ('{id}', 'admin', 1)"
        ))
        .await;
        let r = refresh(&app, &rt2).await;
        assert_eq!(r.status, 200, "{backend:?}");
        assert_eq!(
            verify(&r).roles,
            vec!["admin".to_owned(), "support".to_owned()],
            "{backend:?}"
        );
        let rt3 = r.json()["refresh_token"].as_str().unwrap().to_owned();

        // Disabled: refused, and nothing is written, so the same token works once the account
        // is enabled again (it was never marked used, so this is not reuse).
        ctx.exec(&format!(
            "UPDATE users SET disabled = TRUE WHERE id = '{id}'"
        ))
        .await;
        refresh(&app, &rt3).await.assert_oauth(400, "invalid_grant");
        ctx.exec(&format!(
            "UPDATE users SET disabled = FALSE WHERE id = '{id}'"
        ))
        .await;
        let r = refresh(&app, &rt3).await;
        assert_eq!(
            r.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let rt4 = r.json()["refresh_token"].as_str().unwrap().to_owned();

        // Eight refreshes of one token at once: exactly one new pair, the rest refused inside
        // the grace window, and the family lives on.
        let replies = futures_util::future::join_all((0..8).map(|_| refresh(&app, &rt4))).await;
        let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
        assert_eq!(
            winners.len(),
            1,
            "{backend:?}: {:?}",
            replies
                .iter()
                .map(|r| r.status.as_u16())
                .collect::<Vec<_>>()
        );
        for loser in replies.iter().filter(|r| r.status != 200) {
            loser.assert_oauth(400, "invalid_grant");
        }
        let rt5 = winners[0].json()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(refresh(&app, &rt5).await.status, 200, "{backend:?}");
    }
}
