//! Rate limits and brute-force backoff: shared across replicas through Redis, keyed by the
//! real client address, identical for existing and unknown accounts, and still enforced in
//! process while Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use actix_web::test;
use common::*;
use serde_json::json;
use tessera::api;
use tessera::config::Settings;

fn limited(s: &mut Settings) {
    s.rate_limits.enabled = true;
    s.rate_limits.login_per_ip = "5/1m".into();
    s.rate_limits.login_per_account = "100/1m".into();
    s.rate_limits.register_per_ip = "3/1h".into();
    s.rate_limits.backoff_after = 1000;
}

fn from(req: test::TestRequest, addr: &str) -> test::TestRequest {
    req.peer_addr(addr.parse::<SocketAddr>().unwrap())
}

fn login_req(email: &str, password: &str) -> test::TestRequest {
    post_json("/v1/login", &json!({"email": email, "password": password}))
}

#[actix_web::test]
async fn limits_hold_across_two_replicas_sharing_redis_with_correct_headers() {
    if !redis_available().await {
        return;
    }
    let backend = if backends().contains(&Backend::Postgres) {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let one = Ctx::shaped(backend, true, limited).await;
    // The second replica: same database, same Redis prefix.
    let mut s = one.state.settings.as_ref().clone();
    s.database.migrate_on_start = false;
    let two = tessera::startup::build_state(s).await.unwrap();
    let app1 = test::init_service(api::app(one.state.clone())).await;
    let app2 = test::init_service(api::app(two.clone())).await;

    for i in 0..5 {
        let app_reply = if i % 2 == 0 {
            send(
                &app1,
                from(
                    login_req("x@example.com", "wrong password 1"),
                    "198.51.100.7:4000",
                ),
            )
            .await
        } else {
            send(
                &app2,
                from(
                    login_req("x@example.com", "wrong password 1"),
                    "198.51.100.7:4000",
                ),
            )
            .await
        };
        assert_eq!(app_reply.status, 401, "request {i}");
        assert_eq!(app_reply.header("ratelimit-policy"), Some("5;w=60"));
        assert!(
            app_reply
                .header("ratelimit")
                .unwrap()
                .starts_with(&format!("limit=5, remaining={}", 4 - i)),
            "{:?}",
            app_reply.header("ratelimit")
        );
    }
    for app_reply in [
        send(
            &app1,
            from(login_req("y@example.com", "x"), "198.51.100.7:4001"),
        )
        .await,
        send(
            &app2,
            from(login_req("y@example.com", "x"), "198.51.100.7:4002"),
        )
        .await,
    ] {
        let body = app_reply.assert_problem(429, "rate_limited");
        assert!(body["detail"].is_string());
        let retry: u64 = app_reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=12).contains(&retry), "{retry}");
        assert!(app_reply
            .header("ratelimit")
            .unwrap()
            .contains("remaining=0"));
    }
    // Another address is not affected.
    assert_eq!(
        send(
            &app2,
            from(
                login_req("x@example.com", "wrong password 1"),
                "198.51.100.8:4000"
            )
        )
        .await
        .status,
        401
    );
    assert_eq!(
        tessera::limits::rate::Limiter::backend(&one.state.limiter),
        "redis"
    );
}

#[actix_web::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let ctx = Ctx::shaped(Backend::Sqlite, false, |s| {
        limited(s);
        s.rate_limits.trusted_proxies = "10.0.0.0/8".into();
    })
    .await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    // An untrusted peer's X-Forwarded-For is ignored: five different claimed clients are
    // still one bucket.
    for i in 0..5 {
        let req = from(login_req("a@example.com", "nope nope"), "203.0.113.9:5000")
            .insert_header(("x-forwarded-for", format!("192.0.2.{i}")));
        assert_eq!(send(&app, req).await.status, 401);
    }
    let req = from(login_req("a@example.com", "nope nope"), "203.0.113.9:5000")
        .insert_header(("x-forwarded-for", "192.0.2.200"));
    send(&app, req).await.assert_problem(429, "rate_limited");

    // Behind a trusted proxy, the first untrusted hop from the right is the client.
    for i in 0..5 {
        let req = from(login_req("b@example.com", "nope nope"), "10.1.2.3:5000")
            .insert_header(("x-forwarded-for", "6.6.6.6, 192.0.2.77, 10.9.9.9"));
        assert_eq!(send(&app, req).await.status, 401, "{i}");
    }
    let req = from(login_req("b@example.com", "nope nope"), "10.1.2.3:5000")
        .insert_header(("x-forwarded-for", "6.6.6.6, 192.0.2.77"));
    send(&app, req).await.assert_problem(429, "rate_limited");
    // A client spoofing the left of the chain does not escape: its real hop is counted.
    let req = from(login_req("b@example.com", "nope nope"), "10.1.2.3:5000")
        .insert_header(("x-forwarded-for", "1.2.3.4, 192.0.2.77"));
    send(&app, req).await.assert_problem(429, "rate_limited");
    // The proxies write X-Forwarded-For (the default): a client's own Forwarded header,
    // passed through untouched by such a proxy, changes nothing.
    let req = from(login_req("b@example.com", "nope nope"), "10.1.2.3:5000")
        .insert_header(("x-forwarded-for", "192.0.2.77"))
        .insert_header(("forwarded", "for=198.51.100.1"));
    send(&app, req).await.assert_problem(429, "rate_limited");
    // IPv6 clients are grouped by /64.
    for i in 0..5 {
        let req = from(
            login_req("c@example.com", "nope nope"),
            &format!("[2001:db8:1:2::{i}]:5000"),
        );
        assert_eq!(send(&app, req).await.status, 401);
    }
    let req = from(
        login_req("c@example.com", "nope nope"),
        "[2001:db8:1:2:ffff::1]:5000",
    );
    send(&app, req).await.assert_problem(429, "rate_limited");
}

#[actix_web::test]
async fn backoff_grows_resets_on_success_and_looks_the_same_for_unknown_accounts() {
    for (backend, redis) in shapes().await {
        let ctx = Ctx::shaped(backend, redis, |s| {
            limited(s);
            s.rate_limits.login_per_ip = "1000/1m".into();
            s.rate_limits.backoff_after = 3;
            s.rate_limits.backoff_base = std::time::Duration::from_secs(2);
        })
        .await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        register_and_login(&app, "dan@example.com").await;
        let attempt = |email: &'static str, password: &'static str| {
            from(login_req(email, password), "192.0.2.10:1000")
        };

        let mut seen = Vec::new();
        for email in ["DAN@example.com", "ghost@example.com"] {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(
                    send(&app, attempt(email, "wrong password here"))
                        .await
                        .status
                        .as_u16(),
                );
            }
            let locked = send(&app, attempt(email, PASSWORD)).await;
            let body = locked.assert_problem(429, "rate_limited");
            let retry = locked.header("retry-after").unwrap().to_owned();
            seen.push((statuses, retry, body["code"].clone()));
        }
        assert_eq!(
            seen[0], seen[1],
            "{backend:?}: an existing and an unknown account look the same: {seen:?}"
        );
        assert_eq!(seen[0].0, vec![401, 401, 401]);
        assert_eq!(seen[0].1, "2");

        // Unicode and case variants share the account's bucket.
        send(&app, attempt("ｄａｎ@Example.com", PASSWORD))
            .await
            .assert_problem(429, "rate_limited");
        // After the lock expires a success resets the count; a new failure does not lock.
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(
            send(&app, attempt("dan@example.com", PASSWORD))
                .await
                .status,
            200,
            "{backend:?}"
        );
        assert_eq!(
            send(&app, attempt("dan@example.com", "wrong password here"))
                .await
                .status,
            401
        );
        assert_eq!(
            send(&app, attempt("dan@example.com", PASSWORD))
                .await
                .status,
            200
        );
    }
}

#[actix_web::test]
async fn registration_is_limited_per_address() {
    let ctx = Ctx::shaped(Backend::Sqlite, false, limited).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    for i in 0..3 {
        let r = send(
            &app,
            from(
                post_json(
                    "/v1/users",
                    &json!({"email": format!("r{i}@example.com"), "password": PASSWORD}),
                ),
                "192.0.2.50:1",
            ),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let r = send(
        &app,
        from(
            post_json(
                "/v1/users",
                &json!({"email": "r9@example.com", "password": PASSWORD}),
            ),
            "192.0.2.50:1",
        ),
    )
    .await;
    r.assert_problem(429, "rate_limited");
    assert_eq!(
        ctx.count_users().await,
        3,
        "a refused registration writes nothing"
    );
}

#[actix_web::test]
async fn with_redis_down_limits_still_apply_in_process_and_sharing_resumes_after() {
    if !OwnRedis::available() {
        return;
    }
    let port = OwnRedis::free_port();
    let mut own = OwnRedis::start(port).expect("private redis-server");
    let ctx = Ctx::shaped(Backend::Sqlite, true, |s| {
        limited(s);
        s.redis.url = Some(format!("redis://127.0.0.1:{port}"));
    })
    .await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    assert_eq!(
        send(
            &app,
            from(login_req("e@example.com", "nope nope"), "192.0.2.60:1")
        )
        .await
        .status,
        401
    );
    assert_eq!(ctx.state.limiter.backend(), "redis");

    own.stop();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            send(
                &app,
                from(login_req("e@example.com", "nope nope"), "192.0.2.61:1"),
            )
            .await
            .status
            .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        vec![401, 401, 401, 401, 401, 429, 429],
        "the same policy, counted in process"
    );
    assert_eq!(ctx.state.limiter.backend(), "memory-fallback");
    let ready = send(&app, get("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded");
    assert_eq!(ready.json()["checks"]["rate_limits"], "memory-fallback");
    let metrics = String::from_utf8(send(&app, get("/metrics")).await.body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tessera_rate_limit_fallback 1"),
        "{metrics}"
    );

    let _back = OwnRedis::start(port).expect("restart redis-server");
    let mut shared = false;
    for _ in 0..50 {
        let r = send(
            &app,
            from(login_req("e@example.com", "nope nope"), "192.0.2.62:1"),
        )
        .await;
        assert_ne!(r.status, 500);
        if ctx.state.limiter.backend() == "redis" {
            shared = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(shared, "back on Redis without a restart");
}

#[actix_web::test]
async fn cheap_endpoints_answer_while_logins_are_shed() {
    let db = TestDb::new(Backend::Sqlite);
    let mut s = settings(&db, &new_kek());
    s.password.memory_kib = 8 * 1024;
    s.password.iterations = 3;
    s.password.threads = 1;
    s.password.queue = 2;
    let state = tessera::startup::build_state(s).await.unwrap();
    let app = test::init_service(api::app(state.clone())).await;
    let flood = futures_util::future::join_all(
        (0..30).map(|_| send(&app, login_req("z@example.com", "whatever pass"))),
    );
    let cheap = async {
        let mut ok = 0;
        for _ in 0..10 {
            ok += usize::from(send(&app, get("/.well-known/jwks.json")).await.status == 200);
            ok += usize::from(send(&app, get("/healthz")).await.status == 200);
        }
        ok
    };
    let (replies, ok) = futures_util::future::join(flood, cheap).await;
    assert_eq!(ok, 20);
    assert!(
        replies.iter().any(|r| r.status == 503)
            && replies
                .iter()
                .all(|r| matches!(r.status.as_u16(), 401 | 503))
    );
}
