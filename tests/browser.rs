#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Browser test: a real Chromium, driven by `tests/browser/drive.mjs` (playwright-core), logs
//! in to the real `tessera` binary from a page on another origin of the same site, refreshes
//! through the HttpOnly refresh cookie, is refused without the CSRF header and from a
//! foreign origin, and logs out.
//!
//! This wrapper starts the server (embedded SQLite in a temp dir, cookie transport on, CORS
//! for the page's origin), registers the user over HTTP and runs the driver, which serves
//! the page itself. It installs nothing: it needs Chromium at `TESSERA_TEST_CHROMIUM`
//! (default `/usr/bin/chromium`), Node 20+ (`TESSERA_TEST_NODE`, default `node`) and
//! `tests/browser/node_modules/playwright-core`. Without them the test is skipped loudly,
//! except under `CI=true`, where it fails. The temp dir (server log, driver output,
//! screenshots) is kept and its path printed.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "a_browser_logs_in_refreshes_through_the_cookie_and_logs_out";
const INSTALL: &str = "apt-get install -y chromium && (cd tests/browser && npm ci)";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// drive.mjs gives up by itself after 150 s; this is the backstop.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);
const EMAIL: &str = "alice.browser@example.com";
const PASSWORD: &str = "correct horse battery staple 42";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_path(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(default),
    }
}

struct Tools {
    chromium: PathBuf,
    node: PathBuf,
}

/// The tools the driver needs, or why they are not there.
fn find_tools() -> Result<Tools, String> {
    let chromium = env_path("TESSERA_TEST_CHROMIUM", "/usr/bin/chromium");
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    let node = env_path("TESSERA_TEST_NODE", "node");
    let out = Command::new(&node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if !out.status.success() || major < 20 {
        return Err(format!(
            "{} --version says {version:?}; playwright-core needs Node 20+",
            node.display()
        ));
    }
    let playwright = manifest_dir().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        return Err(format!("{} is missing", playwright.display()));
    }
    Ok(Tools { chromium, node })
}

/// A child process that is killed (by its PID, through `Child`) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago, distinct from `taken`.
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !taken.contains(&port) {
            return port;
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the raw response.
fn http(port: u16, method: &str, path: &str, json: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = json.unwrap_or("");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n");
    if json.is_some() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, text))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {lines} lines)\n{}",
        path.display(),
        all[from..].join("\n")
    )
}

fn wait_ready(server: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            panic!(
                "tessera exited ({status}) before /readyz said 200 (last: {last})\n{}",
                tail(log, 40)
            );
        }
        match http(port, "GET", "/readyz", None) {
            Ok((200, _)) => return,
            Ok((status, text)) => last = format!("status {status}: {text}"),
            Err(e) => last = e.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 within {READY_TIMEOUT:?} (last: {last})\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the driver; past the timeout asks it to stop (SIGTERM to its PID, so
/// playwright-core closes the browser it launched), then kills it.
fn wait_driver(driver: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = driver.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &driver.id().to_string()])
        .status();
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        if driver.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = driver.kill();
    let _ = driver.wait();
    None
}

#[test]
fn a_browser_logs_in_refreshes_through_the_cookie_and_logs_out() {
    let tools = match find_tools() {
        Ok(tools) => tools,
        Err(why) => {
            let hint = format!("install with `{INSTALL}` (run from the crate root)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("browser test cannot run under CI: {why}; {hint}");
            }
            // Straight to the stderr handle, not eprintln!: the harness captures the
            // macros' output of passing tests, and a skip must be seen.
            let stars = "*".repeat(78);
            let _ = writeln!(
                std::io::stderr().lock(),
                "\n{stars}\nSKIPPED: {TEST}\nSKIPPED: {why}\nSKIPPED: {hint}\n{stars}\n"
            );
            return;
        }
    };

    let dir = tempfile::Builder::new()
        .prefix("tessera-browser-")
        .tempdir()
        .unwrap()
        .keep();
    println!("browser test: working directory {}", dir.display());
    let api_port = free_port(&[]);
    let page_port = free_port(&[api_port]);
    let other_port = free_port(&[api_port, page_port]);
    let api = format!("http://localhost:{api_port}");

    // --- the server
    let server_log = dir.join("tessera.log");
    let log_file = std::fs::File::create(&server_log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.arg("serve")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    // Nothing from the caller's Tessera configuration may leak in.
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("TESSERA__") || k == "TESSERA_CONFIG")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("TESSERA__SERVER__PORT", api_port.to_string())
        .env("TESSERA__TOKENS__ISSUER", &api)
        .env("TESSERA__COOKIES__REFRESH_COOKIE", "true")
        .env(
            "TESSERA__CORS__ALLOWED_ORIGINS",
            format!("http://localhost:{page_port}"),
        )
        .env("TESSERA__PASSWORD__MEMORY_KIB", "1024")
        .env("TESSERA__PASSWORD__ITERATIONS", "1");
    let mut server = Reaped(cmd.spawn().expect("spawn tessera serve"));
    println!("tessera serve: pid {}, {api}", server.0.id());
    wait_ready(&mut server.0, api_port, &server_log);

    let (status, text) = http(
        api_port,
        "POST",
        "/v1/users",
        Some(&format!(r#"{{"email":"{EMAIL}","password":"{PASSWORD}"}}"#)),
    )
    .unwrap();
    assert_eq!(status, 201, "POST /v1/users: {text}");

    // --- the browser
    let driver_out = dir.join("drive.log");
    let out_file = std::fs::File::create(&driver_out).unwrap();
    let mut driver = Reaped(
        Command::new(&tools.node)
            .arg(manifest_dir().join("tests/browser/drive.mjs"))
            .current_dir(manifest_dir())
            .env("TESSERA_API", &api)
            .env("PAGE_PORT", page_port.to_string())
            .env("OTHER_PORT", other_port.to_string())
            .env("TESSERA_EMAIL", EMAIL)
            .env("TESSERA_PASSWORD", PASSWORD)
            .env("OUT_DIR", &dir)
            .env("CHROMIUM", &tools.chromium)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().unwrap())
            .stderr(out_file)
            .spawn()
            .expect("spawn node drive.mjs"),
    );
    println!(
        "node drive.mjs: pid {}, pages http://localhost:{page_port} (allowed) and http://127.0.0.1:{other_port} (foreign)",
        driver.0.id()
    );
    let status = wait_driver(&mut driver.0);
    drop(driver);
    drop(server);

    print!(
        "{}",
        std::fs::read_to_string(&driver_out).unwrap_or_default()
    );
    println!(
        "browser test: server log, driver output and screenshots kept in {}",
        dir.display()
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "drive.mjs failed ({s}); see its output above\n{}",
            tail(&server_log, 40)
        ),
        None => panic!(
            "drive.mjs did not finish within {DRIVER_TIMEOUT:?}; see its output above\n{}",
            tail(&server_log, 40)
        ),
    }
}
