#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cluster tests: Python scripts driving several replicas of the real `tessera` binary that
//! share one PostgreSQL database and one Redis.
//!
//! `tests/cluster/rotation.py`, three replicas: the script plays a careful sibling service: one cached JWKS honouring `max-age` exactly,
//! every fresh token verified offline with PyJWT while keys rotate on schedule and on demand,
//! a replica is SIGKILLed mid-rotation and the active key is revoked. It checks that no token
//! ever carries an unknown kid, that replicas switch key at the same instant, that rotations
//! are serialised, and that a revoked key stops verifying everywhere at once (DESIGN §5).
//!
//! `tests/cluster/limits.py`, two replicas: login limits per client address and per account
//! (e-mail variants included) are counted once across both, with 429 and its headers on
//! either replica (DESIGN §6).
//!
//! Needs: PostgreSQL at postgres://postgres@127.0.0.1:5432/postgres with `psql` on PATH (the
//! script creates and drops a database `tessera_cluster_<random>`), Redis at
//! redis://127.0.0.1:6379, and a Python with PyJWT[crypto]: `TESSERA_TEST_PYTHON`, else
//! `<crate>/.venv/bin/python` (`make venv`). Without any of them the test is skipped loudly,
//! except under `CI=true`, where it fails. Rotation takes about two minutes, limits seconds.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POSTGRES: &str = "127.0.0.1:5432";
const REDIS: &str = "127.0.0.1:6379";
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn python_interpreter() -> PathBuf {
    match std::env::var_os("TESSERA_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}

/// `Ok(())` if `python` runs and can import PyJWT and cryptography, else why not.
fn check_python(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", "import jwt, cryptography"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} cannot `import jwt, cryptography` ({}): {}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends `request` to `addr` and returns the first bytes of the answer.
fn probe(addr: &str, request: &[u8], want: usize) -> Result<Vec<u8>, String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .and_then(|()| stream.write_all(request))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("{addr}: no answer: {e}")),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// PostgreSQL answers an SSLRequest (frontend/backend protocol) with one byte, `S` or `N`.
fn check_postgres() -> Result<(), String> {
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    match probe(POSTGRES, &ssl_request, 1)?.as_slice() {
        [b'S'] | [b'N'] => Ok(()),
        other => Err(format!(
            "{POSTGRES} does not answer like PostgreSQL (SSLRequest -> {other:?})"
        )),
    }
}

/// Redis answers PING with `+PONG` (a `-NOAUTH` answer means it is unusable without a password).
fn check_redis() -> Result<(), String> {
    let answer = probe(REDIS, b"*1\r\n$4\r\nPING\r\n", 7)?;
    if answer.starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!(
            "{REDIS} does not answer PING with +PONG: {:?}",
            String::from_utf8_lossy(&answer)
        ))
    }
}

fn check_psql() -> Result<(), String> {
    let out = Command::new("psql")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql (needed to create the test database): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`psql --version` failed ({})", out.status))
    }
}

/// Skips loudly outside CI, fails under `CI=true`.
fn skip_or_fail(test: &str, why: &str, hint: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cluster test cannot run under CI: {why}; {hint}");
    }
    // Straight to the stderr handle, not eprintln!: the harness captures the macros' output
    // of passing tests, and a skip must be seen.
    let stars = "*".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{stars}\nSKIPPED: {test}\nSKIPPED: {why}\nSKIPPED: {hint}\n{stars}\n"
    );
}

/// One cluster script at a time: each starts several replicas, the rotation script is
/// sensitive to timing, and free ports are picked by each script on its own.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tests/cluster/<script>` with the built binary, or skips (fails in CI) when Python
/// with PyJWT, PostgreSQL with psql, or Redis is missing.
fn run_cluster_script(test: &str, script: &str) {
    // A script that failed poisoned the lock; the next one still runs.
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let python = python_interpreter();
    if let Err(why) = check_python(&python) {
        skip_or_fail(
            test,
            &why,
            "run `make venv` (or set TESSERA_TEST_PYTHON to a Python 3.11+ \
             with `pip install -r tests/blackbox/requirements.txt`)",
        );
        return;
    }
    let services = check_postgres()
        .map_err(|e| format!("PostgreSQL unreachable: {e}"))
        .and_then(|()| check_psql())
        .and_then(|()| check_redis().map_err(|e| format!("Redis unreachable: {e}")));
    if let Err(why) = services {
        skip_or_fail(
            test,
            &why,
            "start PostgreSQL (user postgres, trust auth on 127.0.0.1:5432, with psql) \
             and Redis on 127.0.0.1:6379",
        );
        return;
    }

    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("tests/cluster").join(script);
    let out = Command::new(&python)
        .arg(&script)
        .current_dir(manifest_dir)
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("spawn the python cluster script");

    // Through print!/eprint! so the test harness captures it (shown on failure or --nocapture).
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{} failed ({}); see its output above",
        script.display(),
        out.status
    );
}

#[test]
fn three_replicas_rotate_keys_with_zero_failed_verifications() {
    run_cluster_script(
        "three_replicas_rotate_keys_with_zero_failed_verifications",
        "rotation.py",
    );
}

#[test]
fn two_replicas_count_rate_limits_once_through_redis() {
    run_cluster_script(
        "two_replicas_count_rate_limits_once_through_redis",
        "limits.py",
    );
}
