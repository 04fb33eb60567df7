//! The binary's subcommands, run as a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::*;

fn tessera(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args)
        .current_dir(dir)
        .env("TESSERA__LOG__LEVEL", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let kek = new_kek();
    let out = tessera(
        dir.path(),
        &["config", "check"],
        &[
            ("TESSERA__KEYS__KEK", &kek),
            ("TESSERA__PASSWORD__PEPPER", "pepper-secret-value"),
            ("TESSERA__TOKENS__ACCESS_TTL", "10m"),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("access_ttl = \"10m\""), "{all}");
    assert!(all.contains("[redacted]"), "{all}");
    assert!(
        !all.contains(&kek) && !all.contains("pepper-secret-value"),
        "{all}"
    );
}

#[test]
fn a_toml_file_is_layered_under_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(
        &file,
        "[tokens]\naudience = \"from-file\"\naccess_ttl = \"5m\"\n",
    )
    .unwrap();
    let out = tessera(
        dir.path(),
        &["--config", file.to_str().unwrap(), "config", "check"],
        &[("TESSERA__TOKENS__ACCESS_TTL", "20m")],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("audience = \"from-file\""), "{all}");
    assert!(
        all.contains("access_ttl = \"20m\""),
        "env overrides the file: {all}"
    );
}

#[test]
fn bad_and_unsafe_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = tessera(
        dir.path(),
        &["serve"],
        &[("TESSERA__PROFILE", "production")],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("keys.kek") && all.contains("tokens.issuer"),
        "{all}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created when refusing to start"
    );

    let out = tessera(
        dir.path(),
        &["config", "check"],
        &[("TESSERA__TOKENS__ACCESS_TTL", "forever")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("access_ttl"), "{}", text(&out));
    let out = tessera(
        dir.path(),
        &["config", "check"],
        &[("TESSERA__TOKENS__AUDIENCE_TYPO", "x")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown keys are refused: {}",
        text(&out)
    );
    let out = tessera(
        dir.path(),
        &["config", "check"],
        &[("TESSERA__KEYS__KEK", "too-short")],
    );
    assert!(
        out.status.success(),
        "the KEK is decoded at start, not by config check"
    );
    let out = tessera(
        dir.path(),
        &["serve"],
        &[
            ("TESSERA__KEYS__KEK", "dG9vLXNob3J0"),
            ("TESSERA__SERVER__PORT", "0"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("KEK") && !text(&out).contains("dG9vLXNob3J0"),
        "{}",
        text(&out)
    );
}

#[test]
fn migrate_then_grant_role_makes_the_first_admin_without_http() {
    for backend in backends() {
        let db = TestDb::new(backend);
        let url = db.url.clone();
        let env = [("TESSERA__DATABASE__URL", url.as_str())];
        let out = tessera(db.dir.path(), &["migrate"], &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("applied 3 migration"), "{}", text(&out));
        let out = tessera(db.dir.path(), &["migrate"], &env);
        assert!(text(&out).contains("applied 0 migration"), "{}", text(&out));

        let out = tessera(
            db.dir.path(),
            &["users", "grant-role", "root@example.com", "admin"],
            &env,
        );
        assert!(!out.status.success());
        assert!(
            text(&out).contains("no account has this e-mail"),
            "{}",
            text(&out)
        );

        // Register through the library on the same database, then grant by CLI.
        let rt = actix_web::rt::System::new();
        rt.block_on(async {
            let state = tessera::startup::build_state(settings(&db, &new_kek()))
                .await
                .unwrap();
            state
                .accounts
                .register("Root@Example.com", PASSWORD, None)
                .await
                .unwrap();
        });
        let out = tessera(
            db.dir.path(),
            &["users", "grant-role", "ROOT@example.com", "admin"],
            &env,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("role granted"));
        let out = tessera(
            db.dir.path(),
            &["users", "grant-role", "root@example.com", "admin"],
            &env,
        );
        assert!(text(&out).contains("already had"), "{}", text(&out));
        let out = tessera(
            db.dir.path(),
            &["users", "grant-role", "root@example.com", "Bad Role"],
            &env,
        );
        assert!(!out.status.success());
    }
}
