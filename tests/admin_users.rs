//! User administration (`/v1/admin/users…`) in both deployment shapes: embedded (SQLite +
//! in-process mirror) and cluster (PostgreSQL + Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::test;
use common::*;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tessera::api;
use tessera::domain::{Clock, ManualClock};
use tessera::store::audit::AuditKind;

/// A context on a clock of the test's own: a mark ("tokens issued before T are invalid") has
/// one-second resolution, so the tests move time on instead of sleeping.
async fn clocked(
    backend: Backend,
    redis: bool,
) -> (tessera::api::AppState, Arc<ManualClock>, TestDb) {
    let clock = Arc::new(ManualClock::new(tessera::domain::now()));
    let db = TestDb::new(backend);
    let s = shape_settings(&db, &new_kek(), redis);
    let state = tessera::startup::build_state_with_clock(s, clock.clone())
        .await
        .unwrap();
    (state, clock, db)
}

fn admin_req(method: &str, path: &str, token: &str) -> test::TestRequest {
    let req = match method {
        "GET" => test::TestRequest::get(),
        "PATCH" => test::TestRequest::patch(),
        "PUT" => test::TestRequest::put(),
        _ => test::TestRequest::post(),
    };
    req.uri(path)
        .insert_header(("authorization", format!("Bearer {token}")))
}

fn with_json(req: test::TestRequest, body: &Value) -> test::TestRequest {
    req.insert_header(("content-type", "application/json"))
        .set_payload(body.to_string())
}

/// The account's durable "tokens issued before T are invalid" mark.
async fn stored_mark(state: &tessera::api::AppState, id: &str) -> Option<i64> {
    let id = id.to_owned();
    state
        .db
        .run(move |c| tessera::store::users::find(c, &id))
        .await
        .unwrap()
        .and_then(|u| u.tokens_valid_after)
}

/// The account's mark as a sibling reads it from Redis (proto-docs/redis.md).
async fn redis_mark(state: &tessera::api::AppState, id: &str) -> Option<i64> {
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}revoked:user:{id}", state.settings.redis.key_prefix);
    conn.get(&key).await.unwrap()
}

#[actix_web::test]
async fn admins_page_through_read_disable_and_enable_accounts() {
    for (backend, redis) in shapes().await {
        let (state, clock, _db) = clocked(backend, redis).await;
        let app = test::init_service(api::app(state.clone())).await;
        let admin = admin_token(&app, &state, "root@example.com").await;
        let admin_id = send(&app, bearer("/v1/me", &admin)).await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (ann, _) = register_and_login(&app, "ann@example.com").await;
        let (bob, bob_token) = register_and_login(&app, "bob@example.com").await;
        register_and_login(&app, "cat@example.com").await;
        let (ann_access, ann_refresh) = login_pair(&app, "ann@example.com", PASSWORD).await;

        // Paging: two pages of two, every account once, no password hash anywhere.
        let first = send(&app, admin_req("GET", "/v1/admin/users?limit=2", &admin)).await;
        assert_eq!(
            first.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&first.body)
        );
        let first = first.json();
        let next = first["next"].as_str().expect("a next page").to_owned();
        let second = send(
            &app,
            admin_req(
                "GET",
                &format!("/v1/admin/users?limit=2&after={next}"),
                &admin,
            ),
        )
        .await
        .json();
        assert!(
            second["next"].is_null(),
            "{backend:?}: the last page, though full, points at no empty page: {second}"
        );
        let listed: Vec<&Value> = first["users"]
            .as_array()
            .unwrap()
            .iter()
            .chain(second["users"].as_array().unwrap())
            .collect();
        let emails: BTreeSet<&str> = listed
            .iter()
            .map(|u| u["email"].as_str().unwrap())
            .collect();
        assert_eq!(
            emails,
            BTreeSet::from([
                "ann@example.com",
                "bob@example.com",
                "cat@example.com",
                "root@example.com"
            ]),
            "{backend:?}"
        );
        for u in &listed {
            let text = u.to_string();
            assert!(
                !text.contains("argon2") && !text.contains("password"),
                "{text}"
            );
            let expected_roles = if u["id"] == admin_id.as_str() {
                json!(["admin"])
            } else {
                json!([])
            };
            assert_eq!(u["roles"], expected_roles, "{u}");
        }
        for bad in [
            "limit=0",
            "limit=201",
            "limit=ten",
            "after=",
            "after=%00",
            "after=no-such-user",
            "colour=blue",
            "limit=1&limit=2",
        ] {
            send(
                &app,
                admin_req("GET", &format!("/v1/admin/users?{bad}"), &admin),
            )
            .await
            .assert_problem(400, "validation_failed");
        }

        // Only admins; unknown ids are 404.
        send(&app, admin_req("GET", "/v1/admin/users", &bob_token))
            .await
            .assert_problem(403, "forbidden");
        send(&app, get("/v1/admin/users"))
            .await
            .assert_problem(401, "missing_token");
        // A non-admin is refused before the body is even looked at, and changes nothing.
        for (method, path, body) in [
            (
                "PATCH",
                format!("/v1/admin/users/{ann}"),
                json!({"disabled": true}),
            ),
            (
                "PUT",
                format!("/v1/admin/users/{ann}/roles"),
                json!({"roles": ["admin"]}),
            ),
            (
                "POST",
                format!("/v1/admin/users/{ann}/sessions/revoke"),
                json!({}),
            ),
        ] {
            send(&app, with_json(admin_req(method, &path, &bob_token), &body))
                .await
                .assert_problem(403, "forbidden");
            send(
                &app,
                admin_req(method, &path, &bob_token)
                    .insert_header(("content-type", "text/plain"))
                    .set_payload("not json"),
            )
            .await
            .assert_problem(403, "forbidden");
        }
        assert_eq!(send(&app, bearer("/v1/me", &ann_access)).await.status, 200);
        assert_eq!(
            send(&app, bearer("/v1/me", &bob_token)).await.json()["roles"],
            json!([])
        );
        // Ids that cannot be account ids (a NUL byte is not even PostgreSQL text) name no
        // account: 404, never 500.
        for id in ["%00", "no-such-user", "%27%20OR%201%3D1", "0193a6b2-7c4d"] {
            send(
                &app,
                admin_req("GET", &format!("/v1/admin/users/{id}"), &admin),
            )
            .await
            .assert_problem(404, "user_not_found");
            send(
                &app,
                admin_req(
                    "POST",
                    &format!("/v1/admin/users/{id}/sessions/revoke"),
                    &admin,
                ),
            )
            .await
            .assert_problem(404, "user_not_found");
        }
        for kid in ["%00", "a%20b", "x".repeat(65).as_str()] {
            send(
                &app,
                admin_req("POST", &format!("/v1/admin/keys/{kid}/revoke"), &admin),
            )
            .await
            .assert_problem(404, "key_not_found");
        }
        send(
            &app,
            admin_req("GET", "/v1/admin/users/no-such-user", &admin),
        )
        .await
        .assert_problem(404, "user_not_found");
        let one = send(
            &app,
            admin_req("GET", &format!("/v1/admin/users/{ann}"), &admin),
        )
        .await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json()["email"], "ann@example.com");
        assert_eq!(one.json()["disabled"], false);

        // Bad bodies change nothing.
        let patch = |id: &str, body: Value| {
            with_json(
                admin_req("PATCH", &format!("/v1/admin/users/{id}"), &admin),
                &body,
            )
        };
        for body in [
            json!({}),
            json!({"disabled": "yes"}),
            json!({"disabled": true, "email": "x@example.com"}),
        ] {
            send(&app, patch(&ann, body))
                .await
                .assert_problem(400, "validation_failed");
        }
        send(
            &app,
            admin_req("PATCH", &format!("/v1/admin/users/{ann}"), &admin)
                .insert_header(("content-type", "text/plain"))
                .set_payload("disabled"),
        )
        .await
        .assert_problem(415, "unsupported_media_type");
        send(
            &app,
            admin_req("PATCH", &format!("/v1/admin/users/{ann}"), &admin)
                .insert_header(("content-type", "application/json"))
                .set_payload(r#"{"disabled": true, "disabled": false}"#),
        )
        .await
        .assert_problem(400, "malformed_request");
        send(&app, patch("no-such-user", json!({"disabled": true})))
            .await
            .assert_problem(404, "user_not_found");
        send(&app, patch(&admin_id, json!({"disabled": true})))
            .await
            .assert_problem(409, "own_account");
        assert_eq!(send(&app, bearer("/v1/me", &ann_access)).await.status, 200);

        // Disable: every token and session of the account dies at once, nobody else's.
        let ann_iat = state
            .keys
            .current()
            .verifier()
            .verify(&ann_access)
            .unwrap()
            .iat;
        clock.advance(2);
        let r = send(&app, patch(&ann, json!({"disabled": true}))).await;
        assert_eq!(
            r.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["disabled"], true);
        assert!(r.json()["tokens_valid_after"].is_string());
        send(&app, bearer("/v1/me", &ann_access))
            .await
            .assert_problem(401, "invalid_token");
        refresh(&app, &ann_refresh)
            .await
            .assert_oauth(400, "invalid_grant");
        send(
            &app,
            post_json(
                "/v1/login",
                &json!({"email": "ann@example.com", "password": PASSWORD}),
            ),
        )
        .await
        .assert_problem(401, "invalid_credentials");
        assert_eq!(send(&app, bearer("/v1/me", &bob_token)).await.status, 200);
        assert_eq!(
            events(&state, AuditKind::UserDisabled, &ann).await,
            vec![Some(admin_id.clone())]
        );
        if redis {
            let mark = redis_mark(&state, &ann).await;
            assert!(
                mark.is_some_and(|m| m > ann_iat),
                "{backend:?}: a sibling checking Redis sees a mark that kills the old token \
                 (mark {mark:?}, token iat {ann_iat})"
            );
        }
        assert!(
            stored_mark(&state, &ann).await.is_some_and(|m| m > ann_iat),
            "{backend:?}: the durable mark kills the old token"
        );

        // Enable: the account logs in again; tokens from before stay dead.
        clock.advance(2);
        let r = send(&app, patch(&ann, json!({"disabled": false}))).await;
        assert_eq!(r.json()["disabled"], false);
        assert_eq!(events(&state, AuditKind::UserEnabled, &ann).await.len(), 1);
        let fresh = login(&app, "ann@example.com", PASSWORD).await;
        assert_eq!(send(&app, bearer("/v1/me", &fresh)).await.status, 200);
        send(&app, bearer("/v1/me", &ann_access))
            .await
            .assert_problem(401, "invalid_token");
        assert_eq!(
            send(
                &app,
                admin_req("GET", &format!("/v1/admin/users/{bob}"), &admin)
            )
            .await
            .json()["disabled"],
            false
        );
    }
}

#[actix_web::test]
async fn replacing_roles_and_ending_sessions_invalidate_the_old_tokens() {
    for (backend, redis) in shapes().await {
        let (state, clock, _db) = clocked(backend, redis).await;
        let app = test::init_service(api::app(state.clone())).await;
        let admin = admin_token(&app, &state, "root@example.com").await;
        let admin_id = send(&app, bearer("/v1/me", &admin)).await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (dee, dee_token) = register_and_login(&app, "dee@example.com").await;
        let roles_path = format!("/v1/admin/users/{dee}/roles");
        let put = |path: &str, body: Value| with_json(admin_req("PUT", path, &admin), &body);

        // Bad role names and bodies: 400, nothing changes.
        for body in [
            json!({"roles": ["Not A Role"]}),
            json!({"roles": "admin"}),
            json!({"roles": [1]}),
            json!({}),
        ] {
            send(&app, put(&roles_path, body))
                .await
                .assert_problem(400, "validation_failed");
        }
        assert_eq!(
            send(&app, bearer("/v1/me", &dee_token)).await.json()["roles"],
            json!([])
        );
        send(
            &app,
            put("/v1/admin/users/no-such-user/roles", json!({"roles": []})),
        )
        .await
        .assert_problem(404, "user_not_found");
        send(
            &app,
            put(
                &format!("/v1/admin/users/{admin_id}/roles"),
                json!({"roles": ["support"]}),
            ),
        )
        .await
        .assert_problem(409, "own_account");
        assert_eq!(
            send(&app, bearer("/v1/me", &admin)).await.json()["roles"],
            json!(["admin"])
        );

        // A change: the old token dies, a new login carries the new roles (sorted, no
        // duplicates), each change is audited.
        clock.advance(2);
        let r = send(
            &app,
            put(
                &roles_path,
                json!({"roles": ["support", "billing:read", "support"]}),
            ),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["roles"], json!(["billing:read", "support"]));
        send(&app, bearer("/v1/me", &dee_token))
            .await
            .assert_problem(401, "invalid_token");
        let dee_iat = state
            .keys
            .current()
            .verifier()
            .verify(&dee_token)
            .unwrap()
            .iat;
        assert!(stored_mark(&state, &dee).await.is_some_and(|m| m > dee_iat));
        if redis {
            assert!(
                redis_mark(&state, &dee).await.is_some_and(|m| m > dee_iat),
                "{backend:?}: siblings checking Redis refuse the token with the old roles"
            );
        }
        clock.advance(1);
        let (access, refresh_token) = login_pair(&app, "dee@example.com", PASSWORD).await;
        let claims = state.keys.current().verifier().verify(&access).unwrap();
        assert_eq!(
            claims.roles,
            vec!["billing:read".to_owned(), "support".to_owned()]
        );
        assert_eq!(events(&state, AuditKind::RoleGranted, &dee).await.len(), 2);

        // The same set again is no change: the token from after the change lives on.
        let r = send(
            &app,
            put(&roles_path, json!({"roles": ["billing:read", "support"]})),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(send(&app, bearer("/v1/me", &access)).await.status, 200);
        clock.advance(2);
        let r = send(&app, put(&roles_path, json!({"roles": ["support"]}))).await;
        assert_eq!(r.json()["roles"], json!(["support"]));
        assert_eq!(
            events(&state, AuditKind::RoleRevoked, &dee).await,
            vec![Some(admin_id.clone())]
        );
        send(&app, bearer("/v1/me", &access))
            .await
            .assert_problem(401, "invalid_token");

        // Ending every session: refresh tokens and access tokens both die.
        clock.advance(1);
        let r = refresh(&app, &refresh_token).await;
        assert_eq!(r.status, 200, "{backend:?}: refresh survives a role change");
        let refreshed = r.json();
        let (access2, refresh2) = (
            refreshed["access_token"].as_str().unwrap().to_owned(),
            refreshed["refresh_token"].as_str().unwrap().to_owned(),
        );
        assert_eq!(
            state
                .keys
                .current()
                .verifier()
                .verify(&access2)
                .unwrap()
                .roles,
            vec!["support".to_owned()]
        );
        clock.advance(2);
        let r = send(
            &app,
            admin_req(
                "POST",
                &format!("/v1/admin/users/{dee}/sessions/revoke"),
                &admin,
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["sessions_revoked"],
            2,
            "{backend:?}: the first login's and the second's"
        );
        refresh(&app, &refresh2)
            .await
            .assert_oauth(400, "invalid_grant");
        send(&app, bearer("/v1/me", &access2))
            .await
            .assert_problem(401, "invalid_token");
        assert_eq!(
            events(&state, AuditKind::SessionsRevoked, &dee).await.len(),
            1
        );
        send(
            &app,
            admin_req(
                "POST",
                "/v1/admin/users/no-such-user/sessions/revoke",
                &admin,
            ),
        )
        .await
        .assert_problem(404, "user_not_found");
        // The admin's own session was never touched.
        assert_eq!(send(&app, bearer("/v1/me", &admin)).await.status, 200);
    }
}

#[actix_web::test]
async fn a_login_waiting_for_the_hashing_pool_cannot_outlive_a_disable() {
    for (backend, redis) in shapes().await {
        let db = TestDb::new(backend);
        let mut s = shape_settings(&db, &new_kek(), redis);
        // One hashing thread behind a long queue: the login below checks the password long
        // after it read the account.
        s.password.threads = 1;
        s.password.queue = 512;
        // Hashes slow enough (a few ms each) that the queue takes about a second to drain
        // even on an idle machine: the disable below must land while eve's check waits.
        s.password.memory_kib = 4096;
        s.password.iterations = 2;
        let state = tessera::startup::build_state(s).await.unwrap();
        let app = test::init_service(api::app(state.clone())).await;
        let admin = admin_token(&app, &state, "root@example.com").await;
        let (eve, _) = register_and_login(&app, "eve@example.com").await;
        let ended = state.accounts.end_sessions(&eve, "test").await.unwrap();
        assert_eq!(ended, 1);

        let computed = || {
            state
                .accounts
                .hashing_stats()
                .computed
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = computed();
        let mut queue = Vec::new();
        for _ in 0..200 {
            let accounts = state.accounts.clone();
            queue.push(actix_web::rt::spawn(async move {
                accounts
                    .login("nobody@example.com", "wrong", None)
                    .await
                    .is_err()
            }));
        }
        let accounts = state.accounts.clone();
        let pending =
            actix_web::rt::spawn(
                async move { accounts.login("eve@example.com", PASSWORD, None).await },
            );
        // The pool is busy: the disable lands while eve's password waits its turn.
        assert!(
            eventually(std::time::Duration::from_secs(30), || computed()
                > before + 2)
            .await
        );
        let r = send(
            &app,
            with_json(
                admin_req("PATCH", &format!("/v1/admin/users/{eve}"), &admin),
                &json!({"disabled": true}),
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let outcome = pending.await.unwrap();
        assert!(
            matches!(
                outcome,
                Err(tessera::service::accounts::AccountError::InvalidCredentials)
            ),
            "{backend:?}: a login checked against the enabled account is refused once it is disabled: {outcome:?}"
        );
        for q in queue {
            assert!(q.await.unwrap());
        }
        assert_eq!(
            state.accounts.end_sessions(&eve, "test").await.unwrap(),
            0,
            "{backend:?}: the disabled account has no live session"
        );
    }
}

#[actix_web::test]
async fn concurrent_admin_changes_of_one_account_run_one_after_the_other() {
    for (backend, redis) in shapes().await {
        let (state, _clock, _db) = clocked(backend, redis).await;
        let app = test::init_service(api::app(state.clone())).await;
        let admin = admin_token(&app, &state, "root@example.com").await;
        let (eve, _) = register_and_login(&app, "eve@example.com").await;
        let roles_path = format!("/v1/admin/users/{eve}/roles");
        let user_path = format!("/v1/admin/users/{eve}");

        // Two replacements at once: the result is one of the two sets, never their union.
        for i in 0..8 {
            let (a, b) = (format!("team-a{i}"), format!("team-b{i}"));
            let (ra, rb) = tokio::join!(
                send(
                    &app,
                    with_json(
                        admin_req("PUT", &roles_path, &admin),
                        &json!({"roles": [a]})
                    )
                ),
                send(
                    &app,
                    with_json(
                        admin_req("PUT", &roles_path, &admin),
                        &json!({"roles": [b]})
                    )
                ),
            );
            assert_eq!(
                (ra.status.as_u16(), rb.status.as_u16()),
                (200, 200),
                "{backend:?}"
            );
            let now = send(&app, admin_req("GET", &user_path, &admin))
                .await
                .json()["roles"]
                .clone();
            assert!(
                now == json!([a]) || now == json!([b]),
                "{backend:?}: two replacements at once left {now}"
            );
        }

        // A disable and an enable at once: the audit trail ends in the state the account is in.
        for _ in 0..8 {
            let (_, _) = tokio::join!(
                send(
                    &app,
                    with_json(
                        admin_req("PATCH", &user_path, &admin),
                        &json!({"disabled": true})
                    )
                ),
                send(
                    &app,
                    with_json(
                        admin_req("PATCH", &user_path, &admin),
                        &json!({"disabled": false})
                    )
                ),
            );
            let disabled = send(&app, admin_req("GET", &user_path, &admin))
                .await
                .json()["disabled"]
                .as_bool()
                .unwrap();
            let downs = events(&state, AuditKind::UserDisabled, &eve).await.len();
            let ups = events(&state, AuditKind::UserEnabled, &eve).await.len();
            assert_eq!(
                downs - ups,
                usize::from(disabled),
                "{backend:?}: {downs} user_disabled and {ups} user_enabled events, disabled = {disabled}"
            );
        }
    }
}

#[actix_web::test]
async fn a_change_that_waited_for_the_database_marks_the_time_it_committed() {
    // SQLite: another writer holds the database while an admin replaces roles; the change
    // waits (busy timeout), and its mark must not be older than the wait, or a token issued
    // meanwhile with the old roles would outlive the change.
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let (state, clock, db) = clocked(Backend::Sqlite, false).await;
    let app = test::init_service(api::app(state.clone())).await;
    let admin = admin_token(&app, &state, "root@example.com").await;
    let (fay, _) = register_and_login(&app, "fay@example.com").await;
    let (_, fay_refresh) = login_pair(&app, "fay@example.com", PASSWORD).await;
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let mut holder = diesel::SqliteConnection::establish(&path).unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let before = clock.now();
    let roles_path = format!("/v1/admin/users/{fay}/roles");
    // A refresh waits for the database beside the change: whichever commits first, the
    // token it gets either carries the new roles or is refused by the change's mark.
    let (r, refreshed, ()) = tokio::join!(
        send(
            &app,
            with_json(
                admin_req("PUT", &roles_path, &admin),
                &json!({"roles": ["auditor"]})
            )
        ),
        refresh(&app, &fay_refresh),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            clock.advance(5);
            holder.batch_execute("COMMIT").unwrap();
        },
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mark = stored_mark(&state, &fay).await.unwrap();
    assert!(
        mark >= before + 5,
        "the mark ({mark}) is the time after the wait, not before it ({before})"
    );
    assert_eq!(
        refreshed.status,
        200,
        "{}",
        String::from_utf8_lossy(&refreshed.body)
    );
    let token = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = send(&app, bearer("/v1/me", &token)).await;
    assert!(
        me.status == 401 || me.json()["roles"] == json!(["auditor"]),
        "a token refreshed beside a role change has the new roles or is refused: {} {}",
        me.status,
        String::from_utf8_lossy(&me.body)
    );
}
