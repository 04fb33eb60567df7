#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box test: runs `tests/blackbox/offline_verify.py` against the real `tessera` binary.
//!
//! The script plays a sibling service in another language: it verifies Tessera's access
//! tokens offline with PyJWT against the published JWKS, and checks that the server refuses
//! forged tokens, keeps its keys across a restart and refuses a wrong KEK without printing it.
//!
//! Interpreter: `TESSERA_TEST_PYTHON`, else `<crate>/.venv/bin/python` (`make venv`). It needs
//! `PyJWT[crypto]` (tests/blackbox/requirements.txt). Without it the test is skipped loudly,
//! except under `CI=true`, where it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

#[test]
fn python_verifier_accepts_tessera_tokens_and_server_rejects_forgeries() {
    let python = python_interpreter();
    if let Err(why) = check_python(&python) {
        let hint = "run `make venv` (or set TESSERA_TEST_PYTHON to a Python 3.11+ \
                    with `pip install -r tests/blackbox/requirements.txt`)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("black-box test cannot run under CI: {why}; {hint}");
        }
        // Straight to the stderr handle, not eprintln!: the harness captures the macros'
        // output of passing tests, and a skip must be seen.
        let stars = "*".repeat(78);
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{stars}\nSKIPPED: python_verifier_accepts_tessera_tokens_and_server_rejects_forgeries\n\
             SKIPPED: {why}\nSKIPPED: {hint}\n{stars}\n"
        );
        return;
    }

    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("tests/blackbox/offline_verify.py");
    let out = Command::new(&python)
        .arg(&script)
        .current_dir(manifest_dir)
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("spawn the python black-box script");

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
