//! Signing-key lifecycle through the API, on SQLite and PostgreSQL, with a clock the tests
//! move: publication before signing, the switch at activation, retirement, removal,
//! revocation, concurrency between replicas, and KEK rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use actix_web::test;
use common::*;
use serde_json::{json, Value};
use tessera::api;
use tessera::domain::{Clock, ManualClock};
use tessera::store::audit::{self, AuditKind};

fn jwks_kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn a_rotation_publishes_first_switches_at_activation_and_removes_after_the_last_token_expires(
) {
    for backend in backends() {
        let clock = Arc::new(ManualClock::new(tessera::domain::now()));
        let ctx = Ctx::with_clock(backend, clock.clone()).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let admin = admin_token(&app, &ctx.state, "root@example.com").await;
        let old_kid = kid_of(&admin);
        let before = send(&app, get("/.well-known/jwks.json")).await;
        let etag_before = before.header("etag").unwrap().to_owned();

        let r = send(&app, post("/v1/admin/keys/rotate", &admin)).await;
        assert_eq!(
            r.status,
            201,
            "{backend:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let new_key = r.json();
        assert_eq!(new_key["state"], "pending");
        assert_eq!(new_key["alg"], "ES256");
        let new_kid = new_key["kid"].as_str().unwrap().to_owned();
        assert_ne!(new_kid, old_kid);

        // Published at once, with a new ETag; not yet signing.
        let after = send(&app, get("/.well-known/jwks.json")).await;
        assert_ne!(after.header("etag").unwrap(), etag_before);
        assert_eq!(
            jwks_kids(&after.json()),
            vec![old_kid.clone(), new_kid.clone()]
        );
        assert_eq!(
            kid_of(&login(&app, "root@example.com", PASSWORD).await),
            old_kid
        );

        // The publish lead is one JWKS max-age, two reload intervals and the leeway.
        let lead = 300 + 2 * 30 + 30;
        let t0 = clock.now();
        clock.set(t0 + lead - 1);
        assert_eq!(
            kid_of(&login(&app, "root@example.com", PASSWORD).await),
            old_kid
        );
        clock.set(t0 + lead);
        let fresh = login(&app, "root@example.com", PASSWORD).await;
        assert_eq!(
            kid_of(&fresh),
            new_kid,
            "{backend:?}: switches exactly at activation, without a reload"
        );

        // The retired key stays published, so tokens it signed keep verifying.
        ctx.state.keys.reload().await.unwrap();
        assert_eq!(send(&app, bearer("/v1/me", &admin)).await.status, 200);
        let listed = send(
            &app,
            get("/v1/admin/keys").insert_header(("authorization", format!("Bearer {fresh}"))),
        )
        .await
        .json();
        let states: Vec<(String, String)> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap().to_owned(),
                    k["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            states.contains(&(old_kid.clone(), "retired".into()))
                && states.contains(&(new_kid.clone(), "active".into())),
            "{states:?}"
        );
        for k in listed["keys"].as_array().unwrap() {
            assert!(k.get("private_key_sealed").is_none() && k.get("d").is_none());
        }

        // Removal: access TTL plus leeway after retirement, by the periodic duty.
        let grace = 900 + 30;
        clock.set(t0 + lead + grace - 1);
        ctx.state.keys.maintain().await.unwrap();
        ctx.state.keys.reload().await.unwrap();
        assert!(
            jwks_kids(&send(&app, get("/.well-known/jwks.json")).await.json()).contains(&old_kid)
        );
        clock.set(t0 + lead + grace);
        assert!(
            ctx.state.keys.maintain().await.unwrap(),
            "the removal is a change"
        );
        assert_eq!(
            jwks_kids(&send(&app, get("/.well-known/jwks.json")).await.json()),
            vec![new_kid.clone()]
        );
        send(&app, bearer("/v1/me", &admin))
            .await
            .assert_problem(401, "invalid_token");
        // `fresh` has expired by now too (TTL 900 s + leeway): log in again at this instant.
        let now_token = login(&app, "root@example.com", PASSWORD).await;
        send(&app, bearer("/v1/me", &fresh))
            .await
            .assert_problem(401, "invalid_token");
        let listed = send(
            &app,
            get("/v1/admin/keys").insert_header(("authorization", format!("Bearer {now_token}"))),
        )
        .await
        .json();
        assert!(listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == old_kid.as_str() && k["state"] == "removed"));
        let kid = old_kid.clone();
        let erased = ctx
            .state
            .db
            .run(move |c| tessera::store::keys::find(c, &kid))
            .await
            .unwrap()
            .unwrap();
        assert!(
            erased.private_key_sealed.is_none(),
            "{backend:?}: the private half is erased at removal"
        );
        let kid = old_kid.clone();
        assert_eq!(
            ctx.state
                .db
                .run(move |c| audit::list_for_subject(c, AuditKind::KeyRemoved, &kid))
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

#[actix_web::test]
async fn admin_key_endpoints_require_the_admin_role_and_validate_input() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let (_, user) = register_and_login(&app, "user@example.com").await;
        let admin = admin_token(&app, &ctx.state, "root@example.com").await;

        send(&app, test::TestRequest::post().uri("/v1/admin/keys/rotate"))
            .await
            .assert_problem(401, "missing_token");
        send(&app, post("/v1/admin/keys/rotate", &user))
            .await
            .assert_problem(403, "forbidden");
        send(
            &app,
            get("/v1/admin/keys").insert_header(("authorization", format!("Bearer {user}"))),
        )
        .await
        .assert_problem(403, "forbidden");
        send(&app, post("/v1/admin/keys/some-kid/revoke", &user))
            .await
            .assert_problem(403, "forbidden");
        let bad_alg = post("/v1/admin/keys/rotate", &admin)
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"alg":"HS256"}"#);
        let body = send(&app, bad_alg)
            .await
            .assert_problem(400, "validation_failed");
        assert_eq!(body["errors"][0]["field"], "alg");
        let wrong_type = post("/v1/admin/keys/rotate", &admin)
            .insert_header(("content-type", "text/plain"))
            .set_payload("alg=RS256");
        send(&app, wrong_type)
            .await
            .assert_problem(415, "unsupported_media_type");
        let broken = post("/v1/admin/keys/rotate", &admin)
            .insert_header(("content-type", "application/json"))
            .set_payload("{");
        send(&app, broken)
            .await
            .assert_problem(400, "malformed_request");
        let huge = post("/v1/admin/keys/rotate", &admin)
            .insert_header(("content-type", "application/json"))
            .set_payload(vec![b' '; 70 * 1024]);
        send(&app, huge)
            .await
            .assert_problem(413, "payload_too_large");
        let count = |ctx: &Ctx| {
            let db = ctx.state.db.clone();
            async move { db.run(tessera::store::keys::list_all).await.unwrap().len() }
        };
        assert_eq!(
            count(&ctx).await,
            1,
            "{backend:?}: refused requests made no key"
        );

        let rsa = post("/v1/admin/keys/rotate", &admin)
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"alg":"RS256"}"#);
        let r = send(&app, rsa).await;
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["alg"], "RS256");
        let jwks = send(&app, get("/.well-known/jwks.json")).await.json();
        let rsa_jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == "RSA")
            .unwrap()
            .clone();
        assert_eq!(rsa_jwk["alg"], "RS256");
        assert_eq!(rsa_jwk["e"], "AQAB");
        assert!(rsa_jwk.get("d").is_none() && rsa_jwk.get("p").is_none());

        let r = send(&app, post("/v1/admin/keys/rotate", &admin)).await;
        let body = r.assert_problem(409, "rotation_in_progress");
        assert!(
            body["detail"].as_str().unwrap().contains(r#"pending"#),
            "{body}"
        );
        assert_eq!(count(&ctx).await, 2);
        send(&app, post("/v1/admin/keys/no-such-kid/revoke", &admin))
            .await
            .assert_problem(404, "key_not_found");

        // Demoted in the database: the token still says admin, the account no longer is.
        ctx.exec("DELETE FROM user_roles WHERE role = 'admin'")
            .await;
        send(
            &app,
            get("/v1/admin/keys").insert_header(("authorization", format!("Bearer {admin}"))),
        )
        .await
        .assert_problem(403, "forbidden");
    }
}

#[actix_web::test]
async fn revoking_the_signing_key_unpublishes_it_at_once_and_a_fresh_key_signs() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let app = test::init_service(api::app(ctx.state.clone())).await;
        let admin = admin_token(&app, &ctx.state, "root@example.com").await;
        let (_, user_token) = register_and_login(&app, "user@example.com").await;
        let compromised = kid_of(&admin);
        // A second replica on the same database, with its key set loaded before the revocation.
        let replica = tessera::startup::build_state(ctx.settings()).await.unwrap();
        let replica_app = test::init_service(api::app(replica.clone())).await;
        assert_eq!(
            send(&replica_app, bearer("/v1/me", &user_token))
                .await
                .status,
            200
        );

        let r = send(
            &app,
            post(&format!("/v1/admin/keys/{compromised}/revoke"), &admin),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["revoked"]["state"], "revoked");
        let replacement = body["replacement"]["kid"].as_str().unwrap().to_owned();
        assert_eq!(body["replacement"]["state"], "active");

        let kids = jwks_kids(&send(&app, get("/.well-known/jwks.json")).await.json());
        assert_eq!(kids, vec![replacement.clone()], "{backend:?}");
        send(&app, bearer("/v1/me", &user_token))
            .await
            .assert_problem(401, "invalid_token");
        send(&app, bearer("/v1/me", &admin))
            .await
            .assert_problem(401, "invalid_token");
        let relogged = login(&app, "user@example.com", PASSWORD).await;
        assert_eq!(kid_of(&relogged), replacement);
        assert_eq!(send(&app, bearer("/v1/me", &relogged)).await.status, 200);

        // The other replica learns it on its next reload (a Redis announcement triggers one).
        replica.keys.reload().await.unwrap();
        send(&replica_app, bearer("/v1/me", &user_token))
            .await
            .assert_problem(401, "invalid_token");
        assert_eq!(
            send(&replica_app, bearer("/v1/me", &relogged)).await.status,
            200
        );

        // Revoking again is harmless and says so.
        let admin2 = login(&app, "root@example.com", PASSWORD).await;
        let again = send(
            &app,
            post(&format!("/v1/admin/keys/{compromised}/revoke"), &admin2),
        )
        .await
        .json();
        assert_eq!(again["already_revoked"], true);
        let kid = compromised.clone();
        let row = ctx
            .state
            .db
            .run(move |c| tessera::store::keys::find(c, &kid))
            .await
            .unwrap()
            .unwrap();
        assert!(
            row.private_key_sealed.is_none(),
            "a revoked key's private half is erased"
        );
        let kid = compromised.clone();
        assert_eq!(
            ctx.state
                .db
                .run(move |c| audit::list_for_subject(c, AuditKind::KeyRevoked, &kid))
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

#[actix_web::test]
async fn concurrent_rotations_on_two_replicas_make_exactly_one_pending_key() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        let other = tessera::startup::build_state(ctx.settings()).await.unwrap();
        let rotations = (0..6).map(|i| {
            let ring = if i % 2 == 0 {
                ctx.state.keys.clone()
            } else {
                other.keys.clone()
            };
            async move { ring.rotate(None, "test").await }
        });
        let outcomes = futures_util::future::join_all(rotations).await;
        let created = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Err(tessera::service::KeyRingError::RotationInProgress { .. })
                )
            })
            .count();
        assert_eq!((created, refused), (1, 5), "{backend:?}: {outcomes:?}");
        let t = ctx.state.keys.now();
        let rows = ctx
            .state
            .db
            .run(tessera::store::keys::list_all)
            .await
            .unwrap();
        let pending = rows
            .iter()
            .filter(|r| {
                tessera::service::keyring::state_at(r, t)
                    == tessera::service::keyring::KeyState::Pending
            })
            .count();
        let active = rows
            .iter()
            .filter(|r| {
                tessera::service::keyring::state_at(r, t)
                    == tessera::service::keyring::KeyState::Active
            })
            .count();
        assert_eq!((pending, active), (1, 1));
        other.keys.reload().await.unwrap();
        assert_eq!(ctx.state.keys.active_kid(), other.keys.active_kid());
    }
}

#[actix_web::test]
async fn a_scheduled_rotation_happens_once_however_many_replicas_run_the_duty() {
    for backend in backends() {
        let clock = Arc::new(ManualClock::new(tessera::domain::now()));
        let ctx = Ctx::with_clock(backend, clock.clone()).await;
        let replicas: Vec<_> = {
            let mut v = vec![ctx.state.clone()];
            for _ in 0..2 {
                v.push(
                    tessera::startup::build_state_with_clock(ctx.settings(), clock.clone())
                        .await
                        .unwrap(),
                );
            }
            v
        };
        let first = ctx.state.keys.active_kid().unwrap();
        let duty = |reps: &Vec<tessera::api::AppState>| {
            let rings: Vec<_> = reps.iter().map(|s| s.keys.clone()).collect();
            async move {
                futures_util::future::join_all(rings.iter().map(|r| r.maintain()))
                    .await
                    .into_iter()
                    .map(|r| r.unwrap())
                    .filter(|c| *c)
                    .count()
            }
        };
        assert_eq!(duty(&replicas).await, 0, "{backend:?}: not due yet");
        clock.advance(30 * 24 * 3600);
        assert_eq!(
            duty(&replicas).await,
            1,
            "{backend:?}: exactly one replica rotates"
        );
        assert_eq!(
            duty(&replicas).await,
            0,
            "the pending key blocks another rotation"
        );
        for r in &replicas {
            r.keys.reload().await.unwrap();
            assert_eq!(
                r.keys.active_kid().unwrap(),
                first,
                "still the old key until activation"
            );
        }
        clock.advance(300 + 60 + 30);
        let next: Vec<_> = replicas
            .iter()
            .map(|r| r.keys.active_kid().unwrap())
            .collect();
        assert!(
            next.iter().all(|k| *k == next[0]) && next[0] != first,
            "{next:?}"
        );
        let rows = ctx
            .state
            .db
            .run(tessera::store::keys::list_all)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
    }
}

#[actix_web::test]
async fn a_kek_rotation_rewraps_every_key_and_a_key_never_opens_under_the_wrong_kek() {
    for backend in backends() {
        let ctx = Ctx::new(backend).await;
        ctx.state
            .keys
            .rotate(Some(tessera::crypto::keys::KeyAlg::EdDsa), "test")
            .await
            .unwrap();
        let new_kek = new_kek();
        let mut both = ctx.settings();
        both.keys.kek = Some(secrecy::SecretString::from(new_kek.clone()));
        both.keys.previous_keks = Some(secrecy::SecretString::from(format!(" {} ", ctx.kek)));
        let during = tessera::startup::build_state(both.clone()).await.unwrap();
        assert_eq!(
            during.keys.active_kid(),
            ctx.state.keys.active_kid(),
            "old keys open under a previous KEK"
        );
        assert_eq!(during.keys.rewrap("test").await.unwrap(), 2);
        assert_eq!(during.keys.rewrap("test").await.unwrap(), 0, "idempotent");
        let rows = ctx
            .state
            .db
            .run(tessera::store::keys::list_all)
            .await
            .unwrap();
        let new_id = tessera::crypto::seal::Kek::from_base64(&new_kek)
            .unwrap()
            .id()
            .to_owned();
        assert!(rows.iter().all(|r| r.kek_id == new_id));

        let mut only_new = ctx.settings();
        only_new.keys.kek = Some(secrecy::SecretString::from(new_kek.clone()));
        let after = tessera::startup::build_state(only_new).await.unwrap();
        let app = test::init_service(api::app(after.clone())).await;
        register_and_login(&app, "kek@example.com").await;

        let err = match tessera::startup::build_state(ctx.settings()).await {
            Ok(_) => panic!("{backend:?}: the old KEK alone must no longer open the keys"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("KEK") && err.contains(&new_id), "{err}");
        assert!(!err.contains(&new_kek) && !err.contains(&ctx.kek));
    }
}

#[actix_web::test]
async fn admin_key_listing_shows_every_timestamp() {
    let ctx = Ctx::new(Backend::Sqlite).await;
    let app = test::init_service(api::app(ctx.state.clone())).await;
    let admin = admin_token(&app, &ctx.state, "root@example.com").await;
    send(&app, post("/v1/admin/keys/rotate", &admin)).await;
    let listed = send(
        &app,
        get("/v1/admin/keys").insert_header(("authorization", format!("Bearer {admin}"))),
    )
    .await
    .json();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let (pending, active) = (&keys[0], &keys[1]);
    assert_eq!(pending["state"], "pending");
    assert_eq!(active["state"], "active");
    assert_eq!(
        active["retires_at"], pending["activates_at"],
        "the old key retires when the new one activates"
    );
    assert!(
        active["removes_at"].is_string()
            && pending["retires_at"].is_null()
            && active["revoked_at"].is_null()
    );
    assert!(json!(keys).to_string().contains("kek-"));
}
