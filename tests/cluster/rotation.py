#!/usr/bin/env python3
"""Cluster test: three real Tessera replicas rotate signing keys under load.

It plays a careful sibling service that verifies Tessera's access tokens offline: it keeps
ONE cached JWKS (fetched from any replica), honours the JWKS `Cache-Control: max-age`
exactly (refetches only once max-age seconds have passed since the fetch, never because a
`kid` is unknown) and verifies every fresh token with PyJWT. Meanwhile keys rotate on their
own schedule and on demand, a replica is SIGKILLed in the middle of a rotation, and the
active key is revoked. DESIGN §5 promises that such a verifier never meets an unknown `kid`
(a new key is published one JWKS cache lifetime plus two reload intervals before it signs),
that every replica switches key at the same instant, that rotations are serialised, and that
a revoked key leaves the JWKS and stops verifying at once, a fresh key signing instead.

Usage:  TESSERA_BIN=target/debug/tessera .venv/bin/python tests/cluster/rotation.py

Phases: (1) 60 s of logins round-robin on the three replicas with on-demand, concurrent and
scheduled rotations; (2) SIGKILL of one replica during rotate requests, then the key set's
consistency and logins on the survivors; (3) revocation A: the active key revoked while no
other key is published; then the same-iat/same-kid invariant over every token and a summary;
(4) revocation B: the active key revoked right after it activated, while its predecessor is
retired but still published (the same promise, in its sharpest case).

Needs PostgreSQL at postgres://postgres@127.0.0.1:5432/postgres (and `psql`), Redis at
redis://127.0.0.1:6379, Python 3.11+ with PyJWT[crypto] (tests/blackbox/requirements.txt).
It creates a database `tessera_cluster_<random>` and drops it at the end, uses a private Redis
key prefix (deleted at the end; the key-change channel is shared by design) and runs a private
copy of TESSERA_BIN. Prints one line per check; on the first failed check prints the evidence
(status, body, replica, the tail of the replicas' logs), keeps the logs in a temp directory,
cleans up and exits 1.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from typing import Any, Callable, NoReturn

try:
    import jwt
except ImportError as exc:  # pragma: no cover - environment problem, not a test failure
    print(
        f"FAIL: cannot import PyJWT ({exc}); install tests/blackbox/requirements.txt (make venv)",
        flush=True,
    )
    sys.exit(2)

# ---------------------------------------------------------------- the cluster's settings

PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379"
ISSUER = "http://tessera.cluster.test"
AUDIENCE = "api"
ACCESS_TTL_S = 5
LEEWAY_S = 1
JWKS_MAX_AGE_S = 2
RELOAD_INTERVAL_S = 1
ROTATION_INTERVAL_S = 12
PUBLISH_LEAD_S = JWKS_MAX_AGE_S + 2 * RELOAD_INTERVAL_S + LEEWAY_S  # 5
RETIRE_GRACE_S = ACCESS_TTL_S + LEEWAY_S  # 6
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]

USER_EMAIL = "user@cluster.test"
ADMIN_EMAIL = "admin@cluster.test"
PASSWORD = "cluster rotation horse battery 93"

# ---------------------------------------------------------------- the test's own bounds

READY_TIMEOUT_S = 60.0  # process start
SHUTDOWN_TIMEOUT_S = 30.0  # process stop
LOAD_SECONDS = 60.0  # the rotation load: time bound ...
LOAD_MAX_LOGINS = 1200  # ... and count bound
LOGIN_PERIOD_S = 0.1  # aim at ~10 logins per second across the replicas
ROTATE_AT_S = (15.0, 35.0)  # on-demand rotations during the load
CONCURRENT_ROTATE_AT_S = 25.0  # two concurrent rotate requests on two replicas
ADMIN_TOKEN_REUSE_S = 2.5  # the admin token lives 5 s; re-login well before expiry
# Kills of a replica during a rotate request; stops early once one lands inside the database
# transaction or after the commit but before the answer (at least one must land before the
# answer).
KILL_ATTEMPTS_MAX = 8
# How long a replica may take to hear of a revocation (Redis announcement + reload).
PROPAGATION_ALLOWANCE_S = 1.5
# Longest wait for the key lifecycle to reach a state (pending → active → retired → removed).
LIFECYCLE_WAIT_S = ROTATION_INTERVAL_S + PUBLISH_LEAD_S + RETIRE_GRACE_S + 5


# ---------------------------------------------------------------- reporting


class CheckFailed(Exception):
    def __init__(self, message: str, replicas: list["Replica"] | None = None) -> None:
        super().__init__(message)
        self.replicas = replicas or []


def ok(name: str) -> None:
    print(f"PASS  {name}", flush=True)


def info(text: str) -> None:
    print(f"info  {text}", flush=True)


def fail(name: str, detail: str = "", replicas: list["Replica"] | None = None) -> NoReturn:
    raise CheckFailed(f"{name}" + (f"\n{detail}" if detail else ""), replicas)


def check(name: str, cond: bool, detail: str = "", replicas: list["Replica"] | None = None) -> None:
    if not cond:
        fail(name, detail, replicas)
    ok(name)


# ---------------------------------------------------------------- HTTP

for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(_var)]))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Resp:
    method: str
    url: str
    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def json_or_empty(self) -> dict[str, Any]:
        try:
            v = self.json()
        except (ValueError, UnicodeDecodeError):
            return {}
        return v if isinstance(v, dict) else {}

    def describe(self) -> str:
        body = self.body.decode("utf-8", errors="replace")
        if len(body) > 2000:
            body = body[:2000] + "…(truncated)"
        return f"  {self.method} {self.url} -> {self.status}\n  body: {body}"


def http(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Resp:
    """One request; never raises on 4xx/5xx. `timeout=None` blocks (only the readiness poll
    passes a bound)."""
    hdrs = dict(headers or {})
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    elif method == "POST":
        data = b""
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            resp = Resp(method, url, r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        try:
            body = e.read()
        finally:
            e.close()
        resp = Resp(method, url, e.code, e.headers, body)
    return resp


def cache_directives(value: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        out[k.strip().lower()] = v.strip().strip('"') if sep else None
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unix(rfc3339: str | None) -> int | None:
    if rfc3339 is None:
        return None
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_status(rc: int | None) -> str:
    if rc is not None and rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name} (a crash, status {rc})"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def short(kid: str | None) -> str:
    return "None" if kid is None else kid[-12:]


# ---------------------------------------------------------------- PostgreSQL


def psql(sql: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rollbacks(db: str) -> int | None:
    """Transactions rolled back in `db` so far (a client killed inside an open transaction
    leaves one: its backend aborts it on the lost connection)."""
    out = psql(f"SELECT xact_rollback FROM pg_stat_database WHERE datname = '{db}'")
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isdigit() else None


# ---------------------------------------------------------------- Redis


def redis_delete_prefix(prefix: str) -> int:
    """Deletes every key under `prefix` (SCAN + DEL over a bare RESP connection, so no Redis
    client is needed). Returns how many were deleted."""
    host, port = REDIS_URL.removeprefix("redis://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        f = sock.makefile("rwb")

        def command(*args: str) -> Any:
            f.write(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args))
            f.flush()
            return reply()

        def reply() -> Any:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(f"Redis: {rest}")
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [reply() for _ in range(int(rest))]
            raise RuntimeError(f"Redis: unexpected reply {line!r}")

        deleted, cursor = 0, "0"
        while True:
            cursor, keys = command("SCAN", cursor, "MATCH", prefix.replace("*", "\\*") + "*", "COUNT", "1000")
            if keys:
                deleted += command("DEL", *keys)
            if cursor == "0":
                return deleted


# ---------------------------------------------------------------- the replicas


class Replica:
    def __init__(self, name: str, binary: str, workdir: str, env: dict[str, str]) -> None:
        self.name = name
        self.binary = binary
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(env, TESSERA__SERVER__BIND="127.0.0.1", TESSERA__SERVER__PORT=str(self.port))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_paths: list[tuple[str, str]] = []
        self.down = True  # not to be used for traffic (not started, or being killed)

    def __repr__(self) -> str:
        return self.name

    def start(self) -> None:
        self.runs += 1
        out_path = os.path.join(self.workdir, f"run{self.runs}.stdout.log")
        err_path = os.path.join(self.workdir, f"run{self.runs}.stderr.log")
        self.log_paths.append((out_path, err_path))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, "serve"],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.procs.append(self.proc)

    def wait_ready(self, name: str) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                fail(name, f"{self.name} (pid {self.proc.pid}) exited with status {rc} before /readyz said 200 (last: {last})", [self])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(name, f"{self.name}: /readyz not 200 within {READY_TIMEOUT_S:.0f} s (last: {last})", [self])
            try:
                r = http("GET", self.base + "/readyz", timeout=min(2.0, remaining))
                if r.status == 200:
                    self.down = False
                    ok(f"{name} (pid {self.proc.pid}, port {self.port})")
                    return
                last = f"status {r.status}, body {r.body[:300]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        self.down = True
        assert self.proc is not None
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop_all(self) -> list[str]:
        """SIGTERMs every process of this replica still running (SIGKILL after the shutdown
        timeout). Returns what went wrong: a crash or a hang on SIGTERM."""
        trouble = []
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    rc = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    trouble.append(f"{self.name} (pid {proc.pid}) did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM")
                    continue
                if rc != 0:
                    trouble.append(f"{self.name} (pid {proc.pid}) answered SIGTERM with {exit_status(rc)}")
        self.down = True
        return trouble

    def log_tail(self, lines: int = 25, runs: int = 1) -> str:
        parts = []
        for out_path, err_path in self.log_paths[-runs:]:
            for path in (out_path, err_path):
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        text = f.read().decode("utf-8", errors="replace").splitlines()
                    if text:
                        parts.append(f"--- {self.name}/{os.path.basename(path)} (last {min(lines, len(text))} of {len(text)} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) if parts else f"--- {self.name}: logs empty"

    def error_lines(self) -> list[str]:
        found = []
        for out_path, err_path in self.log_paths:
            for path in (out_path, err_path):
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        for line in f.read().decode("utf-8", errors="replace").splitlines():
                            if '"level":"ERROR"' in line or " ERROR " in line:
                                found.append(f"{self.name}/{os.path.basename(path)}: {line}")
        return found


# ---------------------------------------------------------------- the careful verifier


@dataclass
class Verdict:
    ok: bool
    kid: str | None
    iat: int | None
    error: str = ""
    refetched: bool = False
    cache_kids: list[str] = field(default_factory=list)
    cache_age_s: float = 0.0
    cache_source: str = ""


class CachedJwksVerifier:
    """One cached JWKS, refreshed only once `max-age` has elapsed since it was fetched (the
    age counts from the request's start, as RFC 9111 §4.2.3 does). An unknown kid is a
    failure, except in a revocation window, where the caller may allow one forced refetch."""

    def __init__(self, ctx: "Ctx") -> None:
        self.ctx = ctx
        self.lock = threading.RLock()
        self.keys: dict[str, dict[str, Any]] = {}
        self.fetched_at: float | None = None
        self.max_age: float = 0.0
        self.source = ""
        self.fetches = 0
        self.forced_fetches = 0
        self.seen_kids: set[str] = set()

    def _fetch(self, replica: "Replica | None" = None) -> None:
        rep = replica or self.ctx.rng.choice(self.ctx.live())
        start = time.monotonic()
        r = http("GET", rep.base + "/.well-known/jwks.json")
        if r.status != 200:
            self.ctx.problem(f"GET jwks on {rep.name} -> {r.status}", r.describe(), [rep])
            raise CheckFailed(f"JWKS fetch from {rep.name} failed\n{r.describe()}", [rep])
        cc = cache_directives(r.header("Cache-Control"))
        max_age = cc.get("max-age")
        if max_age is None or not max_age.isdigit():
            raise CheckFailed(f"JWKS from {rep.name} has no usable Cache-Control max-age\n{r.describe()}", [rep])
        age = int(r.header("Age") or "0")
        doc = r.json()
        self.keys = {k["kid"]: k for k in doc["keys"]}
        self.seen_kids.update(self.keys)
        self.fetched_at = start - age
        self.max_age = float(max_age)
        self.source = rep.name
        self.fetches += 1

    def cached_kids(self) -> list[str]:
        with self.lock:
            return list(self.keys)

    def verify(self, token: str, forced_refetch_ok: Callable[[str], float | None] | None = None) -> Verdict:
        with self.lock:
            if self.fetched_at is None or time.monotonic() - self.fetched_at >= self.max_age:
                self._fetch()
            try:
                header = jwt.get_unverified_header(token)
                iat = jwt.decode(token, options={"verify_signature": False}).get("iat")
            except jwt.PyJWTError as e:
                return Verdict(False, None, None, f"undecodable token: {e!r}")
            kid = header.get("kid")
            refetched = False
            if kid not in self.keys and forced_refetch_ok is not None:
                deadline = forced_refetch_ok(kid)
                if deadline is not None:
                    # A revoked active key: its replacement was never pre-published, so a
                    # verifier must refetch. Ask replicas in turn until one serves the kid.
                    refetched = True
                    self.forced_fetches += 1
                    order = list(self.ctx.live())
                    i = 0
                    while True:
                        self._fetch(order[i % len(order)])
                        i += 1
                        if kid in self.keys or time.monotonic() >= deadline:
                            break
                        time.sleep(0.05)
            verdict = Verdict(
                False,
                kid,
                iat,
                refetched=refetched,
                cache_kids=list(self.keys),
                cache_age_s=time.monotonic() - (self.fetched_at or 0.0),
                cache_source=self.source,
            )
            jwk = self.keys.get(kid)
            if jwk is None:
                verdict.error = f"unknown kid {kid!r}"
                return verdict
            alg = jwk.get("alg")
            if header.get("alg") != alg:
                verdict.error = f"header alg {header.get('alg')!r} != JWK alg {alg!r}"
                return verdict
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
                jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=AUDIENCE,
                    issuer=ISSUER,
                    leeway=LEEWAY_S,
                    options={"require": REQUIRED_CLAIMS},
                )
            except jwt.PyJWTError as e:
                verdict.error = f"PyJWT: {e!r}"
                return verdict
            verdict.ok = True
            return verdict


# ---------------------------------------------------------------- shared state


@dataclass
class Issued:
    phase: str
    replica: str
    kid: str | None
    iat: int | None
    wall: float  # time.time() when the response arrived


class Ctx:
    def __init__(self, replicas: list[Replica], db: str) -> None:
        self.replicas = replicas
        self.db = db
        self.rng = random.Random(int.from_bytes(secrets.token_bytes(4), "big"))
        self.verifier = CachedJwksVerifier(self)
        self.lock = threading.Lock()
        self.issued: list[Issued] = []
        self.problems: list[str] = []  # 5xx and other surprises seen by background threads
        self.rotate_latencies: list[float] = []
        self.admin_token: str | None = None
        self.admin_token_at = 0.0
        self.admin_lock = threading.RLock()
        self.user_id = ""
        # Excluded from the same-iat check: (first second, last second) of revocation windows.
        self.revocation_windows: list[tuple[int, int]] = []
        self.concurrent_result = "not run"
        self.same_iat = (0, 0)
        self.notes: list[str] = []  # for the summary
        self.phase1: Load | None = None

    def live(self) -> list[Replica]:
        reps = [r for r in self.replicas if not r.down]
        if not reps:
            raise CheckFailed("no live replica left", self.replicas)
        return reps

    def record(self, item: Issued) -> None:
        with self.lock:
            self.issued.append(item)

    def problem(self, what: str, detail: str, replicas: list[Replica] | None = None) -> None:
        with self.lock:
            self.problems.append(f"{what}\n{detail}")

    def assert_alive(self, label: str, expect: list[Replica] | None = None) -> None:
        for rep in expect if expect is not None else self.replicas:
            if not rep.alive():
                rc = rep.proc.poll() if rep.proc else None
                fail(f"{label}: {rep.name} is still running", f"{rep.name} exited with status {rc} on its own", [rep])

    # ---- logins

    def login(self, rep: Replica, email: str, phase: str, forced_refetch_ok: Callable[[str], float | None] | None = None) -> tuple[str, Verdict, Issued]:
        r = http("POST", rep.base + "/v1/login", json_body={"email": email, "password": PASSWORD})
        arrived = time.time()
        body = r.json_or_empty()
        token = body.get("access_token")
        if r.status != 200 or not isinstance(token, str):
            raise CheckFailed(f"{phase}: POST /v1/login on {rep.name} -> 200 with an access_token\n{r.describe()}", [rep])
        verdict = self.verifier.verify(token, forced_refetch_ok)
        item = Issued(phase, rep.name, verdict.kid, verdict.iat, arrived)
        self.record(item)
        return token, verdict, item

    # ---- admin

    def admin(self, force_new: bool = False) -> str:
        with self.admin_lock:
            if force_new or self.admin_token is None or time.monotonic() - self.admin_token_at > ADMIN_TOKEN_REUSE_S:
                rep = self.rng.choice(self.live())
                token, verdict, _ = self.login(rep, ADMIN_EMAIL, "admin")
                if not verdict.ok:
                    self.problem("admin token failed offline verification", f"replica {rep.name}: {verdict}")
                self.admin_token, self.admin_token_at = token, time.monotonic()
            return self.admin_token

    def admin_call(self, method: str, rep: Replica, path: str) -> Resp:
        token = self.admin()
        r = http(method, rep.base + path, headers=bearer(token))
        if r.status == 401:
            # Only expected right after a revocation of the key that signed the admin token.
            token = self.admin(force_new=True)
            r = http(method, rep.base + path, headers=bearer(token))
        if r.status >= 500:
            self.problem(f"{method} {path} on {rep.name} -> {r.status}", r.describe(), [rep])
        return r

    def keys(self, rep: Replica | None = None) -> list[dict[str, Any]]:
        rep = rep or self.rng.choice(self.live())
        r = self.admin_call("GET", rep, "/v1/admin/keys")
        if r.status != 200:
            raise CheckFailed(f"GET /v1/admin/keys on {rep.name} -> 200\n{r.describe()}", [rep])
        return r.json()["keys"]

    def wait_no_pending(self, rep: Replica | None = None) -> list[dict[str, Any]]:
        """Polls the key listing until no key is pending (a pending key activates within the
        publish lead, so this is bounded by the lifecycle)."""
        deadline = time.monotonic() + PUBLISH_LEAD_S + 3
        while True:
            keys = self.keys(rep)
            pending = [k for k in keys if k["state"] == "pending"]
            if not pending:
                return keys
            if time.monotonic() >= deadline:
                raise CheckFailed(
                    f"a pending key activates within the publish lead ({PUBLISH_LEAD_S} s)",
                    f"still pending after {PUBLISH_LEAD_S + 3} s:\n{format_keys(keys)}",
                )
            wake = unix(pending[0]["activates_at"]) or 0
            time.sleep(max(0.1, min(1.0, wake - time.time() + 0.1)))


def format_keys(keys: list[dict[str, Any]]) -> str:
    rows = []
    for k in sorted(keys, key=lambda k: (unix(k["activates_at"]) or 0, k["kid"])):
        rows.append(
            f"    {k['kid']}  {k['alg']:5}  {k['state']:8} created {k['created_at']} activates {k['activates_at']} "
            f"retires {k['retires_at']} removes {k['removes_at']} revoked {k['revoked_at']}"
        )
    return "  key listing (by activation):\n" + "\n".join(rows)


# ---------------------------------------------------------------- load


class Load:
    """Logs in round-robin on the given replicas and verifies every fresh token at once with
    the cached-JWKS verifier. Bounded by count and time; stoppable."""

    def __init__(
        self,
        ctx: Ctx,
        phase: str,
        replicas: Callable[[], list[Replica]],
        seconds: float,
        max_logins: int,
        forced_refetch_ok: Callable[[str], float | None] | None = None,
        judge: Callable[[Verdict, Issued], str | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.phase = phase
        self.replicas = replicas
        self.seconds = seconds
        self.max_logins = max_logins
        self.forced_refetch_ok = forced_refetch_ok
        self.judge = judge  # returns a note if a failed verdict is explained (not a failure)
        self.stop_event = threading.Event()
        self.logins = 0
        self.verified = 0
        self.excused: list[str] = []
        self.failures: list[str] = []
        self.errors: list[str] = []
        self.kids: set[str] = set()
        self.latencies: list[float] = []
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        next_at = time.monotonic()
        i = 0
        try:
            while i < self.max_logins and time.monotonic() < deadline and not self.stop_event.is_set():
                reps = self.replicas()
                rep = reps[i % len(reps)]
                i += 1
                sent = time.time()
                try:
                    _, verdict, item = self.ctx.login(rep, USER_EMAIL, self.phase, self.forced_refetch_ok)
                except CheckFailed as e:
                    self.errors.append(str(e))
                    if len(self.errors) >= 5:
                        break
                    continue
                except (urllib.error.URLError, OSError) as e:
                    self.errors.append(f"{self.phase}: POST /v1/login on {rep.name}: {type(e).__name__}: {e}")
                    if len(self.errors) >= 5:
                        break
                    continue
                self.logins += 1
                self.latencies.append(item.wall - sent)
                if verdict.kid:
                    self.kids.add(verdict.kid)
                note = self.judge(verdict, item) if self.judge else None
                if verdict.ok and note is None:
                    self.verified += 1
                elif note is not None:
                    self.excused.append(note)
                else:
                    self.failures.append(
                        f"{self.phase}: token from {rep.name} (iat {verdict.iat}, kid {verdict.kid}) failed: {verdict.error}; "
                        f"cached JWKS from {verdict.cache_source}, {verdict.cache_age_s:.2f} s old, kids {verdict.cache_kids}"
                        + (" (after a forced refetch)" if verdict.refetched else "")
                    )
                next_at += LOGIN_PERIOD_S
                pause = next_at - time.monotonic()
                if pause > 0:
                    self.stop_event.wait(pause)
                else:
                    next_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.errors.append(f"{self.phase}: load loop crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    def start(self) -> "Load":
        self.thread = threading.Thread(target=self.run, name=f"load-{self.phase}", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()

    def report(self, label: str, replicas: list[Replica]) -> None:
        lat = sorted(self.latencies) or [0.0]
        info(
            f"{label}: {self.logins} logins, {self.verified} verified, {len(self.failures)} failed, {len(self.excused)} excused, "
            f"{len(self.kids)} kids; login latency median {statistics.median(lat) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"
        )
        check(f"{label}: every login answered 200 with a token", not self.errors, "\n".join(self.errors[:5]), replicas)
        check(f"{label}: logins happened", self.logins > 0)
        check(
            f"{label}: 0 failed verifications with the cached JWKS ({self.verified} tokens verified)",
            not self.failures,
            f"{len(self.failures)} failures, first ones:\n" + "\n".join(self.failures[:10]),
            replicas,
        )


# ---------------------------------------------------------------- checks on key listings


def key_set_consistent(label: str, keys: list[dict[str, Any]], chain: bool) -> None:
    """At most one pending key, exactly one active; with `chain`, every non-revoked key
    retires when the next (by activation) activates, is removed retire_grace later, and the
    newest never retires."""
    states = [k["state"] for k in keys]
    pending = [k for k in keys if k["state"] == "pending"]
    active = [k for k in keys if k["state"] == "active"]
    detail = format_keys(keys)
    check(f"{label}: at most one pending key ({len(pending)})", len(pending) <= 1, detail)
    check(f"{label}: exactly one active key ({len(active)})", len(active) == 1, detail)
    unknown = [s for s in states if s not in ("pending", "active", "retired", "removed", "revoked")]
    check(f"{label}: every listed state is known", not unknown, detail)
    if not chain:
        return
    live = sorted((k for k in keys if k["revoked_at"] is None), key=lambda k: (unix(k["activates_at"]), k["kid"]))
    bad = []
    for i, k in enumerate(live):
        want = unix(live[i + 1]["activates_at"]) if i + 1 < len(live) else None
        got = unix(k["retires_at"])
        if got != want:
            bad.append(f"{k['kid']}: retires_at {k['retires_at']} but the next key activates at {want}")
        removes = unix(k["removes_at"])
        if (got is None) != (removes is None) or (got is not None and removes != got + RETIRE_GRACE_S):
            bad.append(f"{k['kid']}: removes_at {k['removes_at']} != retires_at + {RETIRE_GRACE_S} s")
    check(
        f"{label}: each key retires exactly when the next activates, removed {RETIRE_GRACE_S} s later; newest never retires",
        not bad,
        "\n".join(bad) + "\n" + detail,
    )


def same_iat_violations(items: list[Issued], windows: list[tuple[int, int]]) -> tuple[list[str], list[str], int, int]:
    """Pairs of tokens with the same iat but different kids, across replicas and within one.
    Tokens in a revocation window are left out (a revocation switches key without notice,
    so replicas that have not heard yet still sign with the revoked key)."""
    by_iat: dict[int, list[Issued]] = defaultdict(list)
    skipped = 0
    for it in items:
        if it.iat is None or it.kid is None:
            continue
        if any(a <= it.iat <= b for a, b in windows):
            skipped += 1
            continue
        by_iat[it.iat].append(it)
    across, within = [], []
    shared_seconds = 0
    for iat, group in sorted(by_iat.items()):
        if len({g.replica for g in group}) > 1:
            shared_seconds += 1
        kids = {g.kid for g in group}
        if len(kids) <= 1:
            continue
        desc = ", ".join(sorted({f"{g.replica}:{short(g.kid)}" for g in group}))
        pairs_across = any(a.kid != b.kid and a.replica != b.replica for a in group for b in group)
        pairs_within = any(a.kid != b.kid and a.replica == b.replica for a in group for b in group)
        if pairs_across:
            across.append(f"iat {iat}: {desc}")
        if pairs_within:
            within.append(f"iat {iat}: {desc}")
    return across, within, skipped, shared_seconds


# ---------------------------------------------------------------- phases


def phase_setup(ctx: Ctx, binary: str, env: dict[str, str]) -> None:
    first = ctx.replicas[0]
    first.start()
    first.wait_ready(f"{first.name} starts on the fresh database and /readyz -> 200")
    for rep in ctx.replicas[1:]:
        rep.start()
    for rep in ctx.replicas[1:]:
        rep.wait_ready(f"{rep.name} starts on the shared database and /readyz -> 200")

    r = http("GET", first.base + "/.well-known/openid-configuration")
    check("discovery issuer == configured issuer", r.status == 200 and r.json_or_empty().get("issuer") == ISSUER, r.describe(), [first])
    r = http("GET", first.base + "/.well-known/jwks.json")
    cc = cache_directives(r.header("Cache-Control"))
    check(
        f"JWKS Cache-Control max-age == keys.jwks_max_age ({JWKS_MAX_AGE_S})",
        r.status == 200 and cc.get("max-age") == str(JWKS_MAX_AGE_S),
        r.describe() + f"\n  Cache-Control: {r.header('Cache-Control')}",
        [first],
    )
    kids = [set(k["kid"] for k in http("GET", rep.base + "/.well-known/jwks.json").json()["keys"]) for rep in ctx.replicas]
    check("all three replicas publish the same single first key", all(k == kids[0] for k in kids) and len(kids[0]) == 1, f"kids per replica: {kids}")

    users = ctx.replicas[1]
    r = http("POST", users.base + "/v1/users", json_body={"email": USER_EMAIL, "password": PASSWORD})
    check(f"register {USER_EMAIL} on {users.name} -> 201", r.status == 201, r.describe(), [users])
    ctx.user_id = r.json()["id"]
    admins = ctx.replicas[2]
    r = http("POST", admins.base + "/v1/users", json_body={"email": ADMIN_EMAIL, "password": PASSWORD})
    check(f"register {ADMIN_EMAIL} on {admins.name} -> 201", r.status == 201, r.describe(), [admins])
    out = subprocess.run(
        [binary, "users", "grant-role", ADMIN_EMAIL, "admin"],
        env=env,
        cwd=ctx.replicas[0].workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    check(
        f"`tessera users grant-role {ADMIN_EMAIL} admin` exits 0",
        out.returncode == 0,
        f"{exit_status(out.returncode)}\nstdout: {out.stdout}\nstderr: {out.stderr}",
    )
    keys = ctx.keys()
    check("the admin logs in and GET /v1/admin/keys -> 200 with one active key", [k["state"] for k in keys] == ["active"], format_keys(keys))


def rotate_once(ctx: Ctx, label: str, outcomes: list[str], problems: list[str]) -> None:
    ctx.wait_no_pending()
    rep = ctx.rng.choice(ctx.live())
    start = time.monotonic()
    r = ctx.admin_call("POST", rep, "/v1/admin/keys/rotate")
    took = time.monotonic() - start
    body = r.json_or_empty()
    if r.status == 201:
        ctx.rotate_latencies.append(took)
        lead = (unix(body.get("activates_at")) or 0) - (unix(body.get("created_at")) or 0)
        outcomes.append(f"{label} on {rep.name}: 201 {short(body.get('kid'))} pending, signs {lead} s after creation ({took * 1000:.0f} ms)")
        if body.get("state") != "pending" or lead != PUBLISH_LEAD_S:
            problems.append(f"{label} on {rep.name}: new key should be pending and sign {PUBLISH_LEAD_S} s after creation\n{r.describe()}")
    elif r.status == 409 and body.get("code") == "rotation_in_progress":
        keys = ctx.keys()
        pending = [k for k in keys if k["state"] == "pending"]
        outcomes.append(f"{label} on {rep.name}: 409 rotation_in_progress (a scheduled rotation started first)")
        if len(pending) != 1:
            problems.append(f"{label} on {rep.name}: 409 but {len(pending)} pending keys\n{r.describe()}\n{format_keys(keys)}")
    else:
        problems.append(f"{label} on {rep.name}: expected 201 (or 409 rotation_in_progress)\n{r.describe()}")


def concurrent_rotate(ctx: Ctx, outcomes: list[str], problems: list[str]) -> None:
    ctx.wait_no_pending()
    a, b = ctx.rng.sample(ctx.live(), 2)
    token = ctx.admin(force_new=True)
    barrier = threading.Barrier(2)
    results: dict[str, Resp | BaseException] = {}

    def fire(rep: Replica) -> None:
        try:
            barrier.wait()
            results[rep.name] = http("POST", rep.base + "/v1/admin/keys/rotate", headers=bearer(token))
        except BaseException as e:  # noqa: BLE001
            results[rep.name] = e

    started = time.time()
    threads = [threading.Thread(target=fire, args=(rep,)) for rep in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    resps = {n: v for n, v in results.items() if isinstance(v, Resp)}
    if len(resps) != 2:
        problems.append(f"concurrent rotate: a request raised: {results}")
        return
    statuses = sorted(r.status for r in resps.values())
    codes = {n: r.json_or_empty().get("code") for n, r in resps.items()}
    keys = ctx.keys()
    pending = [k for k in keys if k["state"] == "pending"]
    desc = ", ".join(f"{n} -> {r.status}" + (f" {codes[n]}" if codes[n] else "") for n, r in sorted(resps.items()))
    evidence = "\n".join(r.describe() for r in resps.values()) + "\n" + format_keys(keys)
    if statuses == [201, 409] and all(codes[n] == "rotation_in_progress" for n, r in resps.items() if r.status == 409):
        created = next(r for r in resps.values() if r.status == 201).json()["kid"]
        outcomes.append(f"concurrent rotate on {a.name} and {b.name}: {desc} (exactly one new key {short(created)})")
        ctx.concurrent_result = "one 201 + one 409 rotation_in_progress"
        if [k["kid"] for k in pending] != [created]:
            problems.append(f"concurrent rotate: the listing should show exactly the new key {created} pending\n{evidence}")
    elif statuses == [409, 409] and set(codes.values()) == {"rotation_in_progress"}:
        # Acceptable only if a rotation was already pending when both arrived.
        named = {r.json_or_empty().get("detail", "") for r in resps.values()}
        ok_pending = len(pending) == 1 and all(pending[0]["kid"] in d for d in named) and (unix(pending[0]["created_at"]) or 0) <= int(started) + 1
        outcomes.append(f"concurrent rotate on {a.name} and {b.name}: {desc} (both refused; already pending: {short(pending[0]['kid']) if pending else None})")
        ctx.concurrent_result = "two 409 (a rotation was already pending)"
        if not ok_pending:
            problems.append(f"concurrent rotate: both 409, but no single pending key that both refusals name\n{evidence}")
    else:
        ctx.concurrent_result = f"unexpected: {desc}"
        problems.append(f"concurrent rotate: expected one 201 and one 409 rotation_in_progress, got {desc}\n{evidence}")


def phase_rotation_load(ctx: Ctx) -> None:
    info(
        f"phase 1: {LOAD_SECONDS:.0f} s of logins round-robin on 3 replicas (≤ {LOAD_MAX_LOGINS}); rotations on demand at "
        f"{ROTATE_AT_S[0]:.0f} s and {ROTATE_AT_S[1]:.0f} s, two concurrent rotations at {CONCURRENT_ROTATE_AT_S:.0f} s, "
        f"scheduled ones every {ROTATION_INTERVAL_S} s + lead {PUBLISH_LEAD_S} s"
    )
    outcomes: list[str] = []
    problems: list[str] = []
    ctx.concurrent_result = "not run"
    load = Load(ctx, "rotation-load", ctx.live, LOAD_SECONDS, LOAD_MAX_LOGINS)
    t0 = time.monotonic()
    schedule = sorted([(ROTATE_AT_S[0], "rotate #1"), (CONCURRENT_ROTATE_AT_S, "concurrent"), (ROTATE_AT_S[1], "rotate #2")])

    def events() -> None:
        try:
            for at, what in schedule:
                pause = t0 + at - time.monotonic()
                if load.stop_event.wait(max(0.0, pause)):
                    return
                if what == "concurrent":
                    concurrent_rotate(ctx, outcomes, problems)
                else:
                    rotate_once(ctx, what, outcomes, problems)
        except Exception as e:  # noqa: BLE001 - reported below
            problems.append(f"admin events crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    ev = threading.Thread(target=events, name="admin-events", daemon=True)
    ev.start()
    load.run()  # in this thread: bounded by LOAD_SECONDS and LOAD_MAX_LOGINS
    load.stop_event.set()
    ev.join()
    for line in outcomes:
        info(line)
    ctx.assert_alive("after the rotation load")
    load.report("rotation load", ctx.replicas)
    check("the on-demand and concurrent rotations behaved", not problems, "\n\n".join(problems), ctx.replicas)
    check(
        "concurrent rotate requests on two replicas: exactly one 201, the other 409 rotation_in_progress "
        "(or both 409 because one was already pending)",
        ctx.concurrent_result.startswith("one 201") or ctx.concurrent_result.startswith("two 409"),
        ctx.concurrent_result,
    )
    check(f"distinct kids in the load's tokens ≥ 3 ({len(load.kids)})", len(load.kids) >= 3, f"kids: {sorted(load.kids)}")
    keys = ctx.keys()
    key_set_consistent("after the rotation load", keys, chain=True)
    ctx.phase1 = load


def phase_kill_mid_rotation(ctx: Ctx) -> None:
    victim = ctx.replicas[1]
    survivors = [r for r in ctx.replicas if r is not victim]
    # Bisect the kill delay: a kill before the answer narrows from below, an answer before the
    # kill narrows from above, so later kills land ever closer to the commit and the answer.
    lo, hi = 0.0, min(ctx.rotate_latencies, default=0.05)
    info(f"phase 2: SIGKILL {victim.name} during POST /v1/admin/keys/rotate (fastest rotate seen {hi * 1000:.1f} ms)")
    no_response = 0
    committed_unanswered = 0
    inside_tx = 0
    for attempt in range(1, KILL_ATTEMPTS_MAX + 1):
        delay = (lo + hi) / 2
        before_keys = ctx.wait_no_pending(survivors[0])
        before = {k["kid"] for k in before_keys}
        token = ctx.admin(force_new=True)
        result: dict[str, Any] = {}
        sending = threading.Event()

        def fire() -> None:
            try:
                sending.set()
                t = time.monotonic()
                result["resp"] = http("POST", victim.base + "/v1/admin/keys/rotate", headers=bearer(token))
                result["took"] = time.monotonic() - t
            except (urllib.error.URLError, OSError, http_client_errors()) as e:
                result["exc"] = e

        th = threading.Thread(target=fire)
        victim.down = True
        pid = victim.proc.pid if victim.proc else None
        rolled_before = rollbacks(ctx.db)
        th.start()
        sending.wait()
        if delay > 0:
            time.sleep(delay)
        victim.kill9()
        th.join()
        after_keys = ctx.keys(survivors[0])
        rolled_after = rollbacks(ctx.db)
        in_tx = rolled_before is not None and rolled_after is not None and rolled_after > rolled_before
        new = [k for k in after_keys if k["kid"] not in before]
        if "resp" in result:
            resp: Resp = result["resp"]
            hi = min(delay, result["took"])
            outcome = f"answered {resp.status} {resp.json_or_empty().get('code', '')}".rstrip() + f" in {result['took'] * 1000:.1f} ms, before the kill"
            if resp.status >= 500:
                fail(f"kill attempt {attempt}: no 5xx from the rotate request", resp.describe(), [victim])
        else:
            lo = delay
            no_response += 1
            committed_unanswered += 1 if new else 0
            inside_tx += 1 if in_tx else 0
            outcome = f"no answer ({type(result['exc']).__name__}): killed mid-request"
        committed = f"committed {short(new[0]['kid'])} ({new[0]['state']})" if new else "not committed"
        if in_tx:
            committed += f"; PostgreSQL rolled back an open transaction ({rolled_before} → {rolled_after} rollbacks)"
        info(f"kill attempt {attempt}: SIGKILL pid {pid} {delay * 1000:.1f} ms after sending → {outcome}; rotation {committed}")
        check(f"kill attempt {attempt}: at most one new key", len(new) <= 1, format_keys(after_keys))
        key_set_consistent(f"kill attempt {attempt}: key set seen from {survivors[0].name}", after_keys, chain=True)
        if new and "resp" not in result:
            # Committed but the victim died before answering (and perhaps before announcing
            # it): the survivors' reload timer must still pick it up well within the lead.
            kid = new[0]["kid"]
            t_seen = time.monotonic()
            deadline = t_seen + 2 * RELOAD_INTERVAL_S + 1.0
            missing = list(survivors)
            while missing and time.monotonic() < deadline:
                missing = [s for s in missing if kid not in {k["kid"] for k in http("GET", s.base + "/.well-known/jwks.json").json()["keys"]}]
                if missing:
                    time.sleep(0.1)
            check(
                f"kill attempt {attempt}: the survivors publish the unanswered rotation's key {short(kid)} within 2 × reload_interval",
                not missing,
                f"still missing on {missing} after {time.monotonic() - t_seen:.1f} s",
                missing,
            )
        ctx.assert_alive(f"kill attempt {attempt}", survivors)
        if committed_unanswered >= 1 or inside_tx >= 1 or attempt == KILL_ATTEMPTS_MAX:
            break
        victim.start()
        victim.wait_ready(f"kill attempt {attempt}: {victim.name} restarts after SIGKILL")
    note = (
        f"kills: {no_response} landed before the answer; {inside_tx} inside an open database transaction (rolled back), "
        f"{committed_unanswered} after the rotation committed"
    )
    info(note)
    ctx.notes.append(note)
    check(f"at least one SIGKILL landed mid-request ({no_response})", no_response >= 1, "every rotate request was answered before the kill")

    keys = ctx.keys(survivors[1])
    key_set_consistent(f"after the kills: key set seen from {survivors[1].name}", keys, chain=True)
    burst = Load(ctx, "survivors", lambda: survivors, 6.0, 60)
    burst.run()
    ctx.assert_alive("after the survivors' burst", survivors)
    burst.report(f"logins on the survivors {survivors[0].name} and {survivors[1].name} with {victim.name} dead", survivors)
    victim.start()
    victim.wait_ready(f"{victim.name} restarts after the last SIGKILL")
    burst = Load(ctx, "after-restart", ctx.live, 3.0, 30)
    burst.run()
    burst.report("logins on all three replicas after the restart", ctx.replicas)
    key_set_consistent("after the restart", ctx.keys(victim), chain=True)


def http_client_errors() -> type[BaseException]:
    import http.client as hc

    return hc.HTTPException


class Revocation:
    """Shared between the load thread and the main thread during a revocation."""

    def __init__(self) -> None:
        self.started_at: float | None = None  # time.time() before the revoke request
        self.returned_at: float | None = None
        self.revoked: str | None = None
        self.replacement: str | None = None
        self.new_kids: list[str] = []  # kids that forced a refetch
        # Tokens signed by the revoked kid after the revoke returned: (seconds late, note).
        self.stale_signed: list[tuple[float, str]] = []

    def refetch_deadline(self, kid: str) -> float | None:
        if self.started_at is None or kid == self.revoked:
            return None
        self.new_kids.append(kid)
        base = max(time.time(), self.returned_at or time.time())
        return time.monotonic() + (base - time.time()) + PROPAGATION_ALLOWANCE_S

    def judge(self, verdict: Verdict, item: Issued) -> str | None:
        if self.revoked is None or verdict.kid != self.revoked or self.started_at is None:
            return None
        if item.wall < self.started_at:
            return None
        late = item.wall - (self.returned_at or item.wall)
        note = f"{item.replica} signed with the revoked key {short(self.revoked)} {late * 1000:+.0f} ms after the revoke returned (iat {item.iat})"
        self.stale_signed.append((late, note))
        if late > PROPAGATION_ALLOWANCE_S:
            return None  # a failure: verdict decides (and it is flagged below)
        return note


def phase_revocation(ctx: Ctx, label: str, predecessor_in_grace: bool) -> None:
    rev = Revocation()
    load = Load(ctx, f"revocation-{label}", ctx.live, 120.0, 1200, forced_refetch_ok=rev.refetch_deadline, judge=rev.judge).start()
    try:
        _revoke_under_load(ctx, label, predecessor_in_grace, rev)
    finally:
        load.stop()
    ctx.assert_alive(f"{label}: after the revocation")
    load.report(f"{label}: logins during the revocation", ctx.replicas)
    late = [note for secs, note in rev.stale_signed if secs > PROPAGATION_ALLOWANCE_S]
    if rev.stale_signed:
        info(f"{label}: tokens signed by the revoked key after the revoke was sent: " + "; ".join(n for _, n in rev.stale_signed[:6]))
    check(f"{label}: no replica signed with the revoked key later than {PROPAGATION_ALLOWANCE_S} s after the revoke", not late, "\n".join(late))
    unexpected = sorted({k for k in rev.new_kids if k != rev.replacement})
    check(f"{label}: the only kid that forced a JWKS refetch is the replacement", not unexpected, f"replacement {rev.replacement}, refetch kids {unexpected}")


def _revoke_under_load(ctx: Ctx, label: str, predecessor_in_grace: bool, rev: Revocation) -> None:
    if predecessor_in_grace:
        info(f"{label}: rotate, then revoke the new key right after it activates, while its predecessor is retired but still published")
        ctx.wait_no_pending()
        rep = ctx.rng.choice(ctx.live())
        r = ctx.admin_call("POST", rep, "/v1/admin/keys/rotate")
        check(f"{label}: POST /v1/admin/keys/rotate on {rep.name} -> 201", r.status == 201, r.describe(), [rep])
        new_kid = r.json()["kid"]
        activates = unix(r.json()["activates_at"]) or 0
        time.sleep(max(0.0, activates - time.time() + 0.3))
        deadline = time.monotonic() + 3
        while True:
            keys = ctx.keys()
            states = {k["kid"]: k["state"] for k in keys}
            if states.get(new_kid) == "active" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        retired = [k for k in keys if k["state"] == "retired"]
        check(
            f"{label}: {short(new_kid)} is active and its predecessor is retired but still published",
            states.get(new_kid) == "active" and len(retired) >= 1,
            format_keys(keys),
        )
        predecessors = {k["kid"] for k in retired}
    else:
        info(f"{label}: revoke the active key while no key is pending or retired")
        deadline = time.monotonic() + LIFECYCLE_WAIT_S
        while True:
            keys = ctx.keys()
            busy = [k for k in keys if k["state"] in ("pending", "retired")]
            if not busy:
                break
            if time.monotonic() > deadline:
                fail(f"{label}: the key set settles to a single published key", format_keys(keys))
            time.sleep(0.25)
        predecessors = set()
    active = [k for k in keys if k["state"] == "active"]
    check(f"{label}: exactly one active key before the revoke", len(active) == 1, format_keys(keys))
    kid = active[0]["kid"]

    # A token signed by the key about to be revoked, accepted everywhere before the revoke.
    for _ in range(20):
        token, verdict, _item = ctx.login(ctx.rng.choice(ctx.live()), USER_EMAIL, f"revocation-{label}")
        if verdict.kid == kid:
            break
        time.sleep(0.1)
    check(f"{label}: a fresh token signed by {short(kid)} verifies offline", verdict.kid == kid and verdict.ok, str(verdict))
    for rep in ctx.replicas:
        r = http("GET", rep.base + "/v1/me", headers=bearer(token))
        check(f"{label}: before the revoke, /v1/me on {rep.name} accepts it (200)", r.status == 200, r.describe(), [rep])

    target = ctx.rng.choice(ctx.live())
    admin_token = ctx.admin(force_new=True)
    rev.revoked = kid
    rev.started_at = time.time()
    r = http("POST", f"{target.base}/v1/admin/keys/{kid}/revoke", headers=bearer(admin_token))
    rev.returned_at = time.time()
    took_ms = (rev.returned_at - rev.started_at) * 1000
    body = r.json_or_empty()
    check(f"{label}: POST /v1/admin/keys/{short(kid)}/revoke on {target.name} -> 200 ({took_ms:.0f} ms)", r.status == 200, r.describe(), [target])
    ctx.revocation_windows.append((int(rev.started_at) - 1, int(rev.returned_at + PROPAGATION_ALLOWANCE_S) + 1))
    replacement = body.get("replacement")
    check(
        f"{label}: the revoked key is reported revoked, not already_revoked",
        (body.get("revoked") or {}).get("kid") == kid and (body.get("revoked") or {}).get("state") == "revoked" and body.get("already_revoked") is False,
        r.describe(),
    )
    if not isinstance(replacement, dict):
        # Gather what the cluster does instead before failing.
        keys_now = ctx.keys(target)
        evidence = [r.describe(), format_keys(keys_now)]
        for rep in ctx.replicas:
            try:
                _t2, v2, _ = ctx.login(rep, USER_EMAIL, f"revocation-{label}")
                evidence.append(f"  a login on {rep.name} now is signed by {v2.kid} (iat {v2.iat}); offline verify: {v2.ok} {v2.error}")
            except CheckFailed as e:
                evidence.append(f"  a login on {rep.name} now fails: {e}")
        if predecessors:
            evidence += aftermath(ctx, [k for k in keys_now if k["kid"] in predecessors])
        fail(
            f"{label}: revoking the signing key {short(kid)} activates a fresh replacement key at once (DESIGN §5)",
            "the response has no replacement" + (f"; the retired predecessor(s) {sorted(predecessors)} sign again instead" if predecessors else "") + "\n" + "\n".join(evidence),
            [target],
        )
    rev.replacement = replacement["kid"]
    fresh = rev.replacement not in ctx.verifier.seen_kids and rev.replacement not in predecessors
    check(
        f"{label}: the replacement {short(rev.replacement)} is a fresh key, active from now",
        fresh and replacement.get("state") == "active",
        r.describe(),
    )

    # Every replica refuses the revoked key's token: within one request, or report the delay.
    refusals: list[str] = []
    for rep in ctx.replicas:
        accepted = 0
        while True:
            r2 = http("GET", rep.base + "/v1/me", headers=bearer(token))
            delay = time.time() - rev.returned_at
            if r2.status == 401:
                break
            if r2.status != 200 or delay > PROPAGATION_ALLOWANCE_S:
                fail(
                    f"{label}: {rep.name} refuses the revoked key's token with 401 within {PROPAGATION_ALLOWANCE_S} s",
                    f"{accepted} acceptances, last after {delay * 1000:.0f} ms\n{r2.describe()}",
                    [rep],
                )
            accepted += 1
            time.sleep(0.02)
        if accepted == 0:
            ok(f"{label}: {rep.name} refuses the revoked key's token with 401 on the first request after the revoke ({delay * 1000:.0f} ms)")
        else:
            ok(f"{label}: {rep.name} refuses the revoked key's token with 401 after {accepted} acceptance(s), {delay * 1000:.0f} ms after the revoke returned")
        refusals.append(f"{rep.name} {'first request' if accepted == 0 else f'after {accepted} acceptance(s)'} ({delay * 1000:.0f} ms)")

    ctx.notes.append(f"{label}: revoked key's token refused (401) by " + ", ".join(refusals))

    # Every replica's JWKS drops the revoked key and publishes the replacement.
    for rep in ctx.replicas:
        polls = 0
        while True:
            polls += 1
            kids = {k["kid"] for k in http("GET", rep.base + "/.well-known/jwks.json").json()["keys"]}
            delay = time.time() - rev.returned_at
            if kid not in kids and rev.replacement in kids:
                break
            if delay > PROPAGATION_ALLOWANCE_S:
                fail(f"{label}: {rep.name}'s JWKS drops {short(kid)} and publishes {short(rev.replacement)}", f"kids after {delay * 1000:.0f} ms: {sorted(kids)}", [rep])
            time.sleep(0.02)
        ok(f"{label}: {rep.name}'s JWKS drops the revoked key and publishes the replacement (poll {polls}, {delay * 1000:.0f} ms after the revoke)")

    # New logins on every replica are signed by the replacement and verify.
    for rep in ctx.replicas:
        tries = 0
        while True:
            tries += 1
            _t, v, item = ctx.login(rep, USER_EMAIL, f"revocation-{label}", rev.refetch_deadline)
            delay = item.wall - rev.returned_at
            if v.kid == rev.replacement:
                break
            if delay > PROPAGATION_ALLOWANCE_S:
                fail(
                    f"{label}: a new login on {rep.name} is signed by the replacement {short(rev.replacement)}",
                    f"after {delay * 1000:.0f} ms it is still signed by {v.kid}\n{format_keys(ctx.keys())}",
                    [rep],
                )
            time.sleep(0.05)
        check(
            f"{label}: a new login on {rep.name} is signed by the replacement and verifies offline (login {tries}, {delay * 1000:.0f} ms after the revoke)",
            v.ok,
            f"{v}",
            [rep],
        )

    keys = ctx.keys()
    active = [k for k in keys if k["state"] == "active"]
    check(f"{label}: the listing shows {short(kid)} revoked", any(k["kid"] == kid and k["state"] == "revoked" for k in keys), format_keys(keys))
    check(f"{label}: the only active key is the replacement", [k["kid"] for k in active] == [rev.replacement], format_keys(keys))
    key_set_consistent(f"{label}: after the revoke", keys, chain=False)
    time.sleep(2.0)  # more load after the revocation settled


def aftermath(ctx: Ctx, predecessors: list[dict[str, Any]]) -> list[str]:
    """Evidence only (the check has failed already): what the cluster does from now until a
    key signs again after the retired predecessor that signs instead is removed. Bounded by
    its removal time plus a publish lead."""
    pred = max(predecessors, key=lambda k: unix(k["activates_at"]) or 0)
    removes = unix(pred["removes_at"]) or int(time.time())
    end = min(removes + PUBLISH_LEAD_S + 1.5, time.time() + RETIRE_GRACE_S + PUBLISH_LEAD_S + 2)
    out = [f"  aftermath: {pred['kid']} is retired (removes_at {pred['removes_at']} = {removes}); logins on every replica every ~0.4 s:"]
    victim: tuple[str, int] | None = None  # a token it signed that outlives its removal
    present_at = [removes + 0.5, removes + 2.5]  # before and after every replica's reload
    while time.time() < end:
        if victim is not None and present_at and time.time() >= present_at[0]:
            present_at.pop(0)
            token, exp = victim
            now = time.time()
            statuses = [f"{rep.name} {http('GET', rep.base + '/v1/me', headers=bearer(token)).status}" for rep in ctx.live()]
            v = ctx.verifier.verify(token)
            out.append(
                f"  >> a token signed by {short(pred['kid'])} before its removal at {removes}, exp {exp}, presented at {now:.1f} "
                f"({'BEFORE' if now < exp else 'after'} its exp): /v1/me -> " + ", ".join(statuses)
                + f"; offline with a JWKS {v.cache_age_s:.1f} s old: {'ok' if v.ok else 'FAILED (' + v.error + ')'}"
            )
        row = []
        for rep in ctx.live():
            try:
                r = http("POST", rep.base + "/v1/login", json_body={"email": USER_EMAIL, "password": PASSWORD})
                if r.status != 200:
                    row.append(f"{rep.name}: {r.status} {r.json_or_empty().get('code', '')}")
                    continue
                token = r.json()["access_token"]
                v = ctx.verifier.verify(token)
                ctx.record(Issued("aftermath", rep.name, v.kid, v.iat, time.time()))
                claims = jwt.decode(token, options={"verify_signature": False})
                if v.kid == pred["kid"] and claims["exp"] > removes:
                    victim = (token, claims["exp"])
                row.append(f"{rep.name}: 200 kid {short(v.kid)} exp {claims['exp']} offline {'ok' if v.ok else 'FAILED (' + v.error + ')'}")
            except Exception as e:  # noqa: BLE001 - evidence gathering must not hide the failure
                row.append(f"{rep.name}: {type(e).__name__}: {str(e).splitlines()[0]}")
        out.append(f"    t={time.time():.1f}: " + " | ".join(row))
        time.sleep(0.4)
    try:
        out.append(format_keys(ctx.keys()))
    except Exception as e:  # noqa: BLE001
        out.append(f"  (no key listing: {e})")
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    binary = os.environ.get("TESSERA_BIN")
    if not binary:
        print("FAIL: set TESSERA_BIN to the tessera server binary", flush=True)
        return 2
    binary = os.path.abspath(binary)
    if not os.access(binary, os.X_OK):
        print(f"FAIL: TESSERA_BIN={binary} is not an executable file", flush=True)
        return 2
    if shutil.which("psql") is None:
        print("FAIL: psql is not on PATH (needed to create and drop the test database)", flush=True)
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    suffix = secrets.token_hex(6)
    db = f"tessera_cluster_{suffix}"
    workdir = tempfile.mkdtemp(prefix="tessera-cluster-")
    # Run a private copy: a rebuild of the shared target/ during the run must not give the
    # replicas restarted later another binary than the others.
    private = os.path.join(workdir, "tessera")
    shutil.copy2(binary, private)
    binary = private
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TESSERA_") and k != "RUST_LOG"
    }
    env.update(
        {
            "TESSERA__DATABASE__URL": f"{PG_ADMIN_URL}/{db}",
            "TESSERA__REDIS__URL": REDIS_URL,
            "TESSERA__KEYS__KEK": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
            "TESSERA__TOKENS__ISSUER": ISSUER,
            "TESSERA__TOKENS__ACCESS_TTL": f"{ACCESS_TTL_S}s",
            "TESSERA__TOKENS__LEEWAY": f"{LEEWAY_S}s",
            "TESSERA__KEYS__JWKS_MAX_AGE": f"{JWKS_MAX_AGE_S}s",
            "TESSERA__KEYS__RELOAD_INTERVAL": f"{RELOAD_INTERVAL_S}s",
            "TESSERA__KEYS__ROTATION_INTERVAL": f"{ROTATION_INTERVAL_S}s",
            "TESSERA__PASSWORD__MEMORY_KIB": "1024",
            "TESSERA__PASSWORD__ITERATIONS": "1",
            "TESSERA__LOG__LEVEL": "warn",
        }
    )
    # Settings that only some versions have: the Redis key prefix (a private one, so this
    # test's keys never meet another run's) and rate limits (raised far above this load:
    # ~10 logins a second for one account from one IP, and the admin polling the key list).
    effective = subprocess.run(
        [binary, "config", "check"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=READY_TIMEOUT_S
    )
    if effective.returncode != 0:
        print(f"FAIL  `tessera config check` refuses the cluster settings:\n{effective.stdout}{effective.stderr}", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1
    redis_prefix = None
    if "key_prefix" in effective.stdout:
        redis_prefix = f"tessera-cluster-{suffix}:"
        env["TESSERA__REDIS__KEY_PREFIX"] = redis_prefix
    if "[rate_limits]" in effective.stdout:
        for name in ("LOGIN_PER_IP", "LOGIN_PER_ACCOUNT", "REGISTER_PER_IP", "REFRESH_PER_IP", "ADMIN_PER_USER"):
            env[f"TESSERA__RATE_LIMITS__{name}"] = "100000/1m"
    replicas = [Replica(name, binary, workdir, env) for name in ("replica-a", "replica-b", "replica-c")]
    ctx = Ctx(replicas, db)
    info(f"binary={os.environ['TESSERA_BIN']} (run as a private copy) database={db} redis prefix={redis_prefix} workdir={workdir} ports={[r.port for r in replicas]}")
    succeeded = False
    db_created = False
    try:
        out = psql(f"CREATE DATABASE {db}")
        check(f"CREATE DATABASE {db}", out.returncode == 0, f"psql status {out.returncode}: {out.stderr.strip()}")
        db_created = True
        run_checks(ctx, binary, env)
        succeeded = True
    except (CheckFailed, Exception) as e:
        if isinstance(e, CheckFailed):
            print(f"FAIL  {e}", flush=True)
        else:
            print(f"FAIL  unexpected {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        with ctx.lock:
            if ctx.problems:
                print("info  also seen by background threads:\n" + "\n".join(ctx.problems[:5]), flush=True)
        shown = e.replicas if isinstance(e, CheckFailed) and e.replicas else replicas
        for rep in shown:
            print(rep.log_tail(runs=2), flush=True)
        print(f"info  replica logs kept in {workdir}", flush=True)
    finally:
        trouble = [t for rep in replicas for t in rep.stop_all()]
        if trouble:
            print("FAIL  every replica exits cleanly on SIGTERM\n" + "\n".join(trouble), flush=True)
            succeeded = False
        elif ctx.issued:
            ok("every replica still running exits with status 0 on SIGTERM")
        try:
            os.remove(private)
        except OSError:
            pass
        if db_created:
            out = psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            if out.returncode != 0:
                print(f"FAIL  DROP DATABASE {db}: {out.stderr.strip()}", flush=True)
                succeeded = False
            else:
                ok(f"DROP DATABASE {db}")
        if redis_prefix is not None:
            try:
                ok(f"deleted {redis_delete_prefix(redis_prefix)} Redis keys under {redis_prefix}")
            except (OSError, RuntimeError, ValueError) as e:
                print(f"FAIL  deleting the Redis keys under {redis_prefix}: {e}", flush=True)
                succeeded = False
        if succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
    if succeeded:
        print("all cluster checks passed", flush=True)
        return 0
    return 1


def run_checks(ctx: Ctx, binary: str, env: dict[str, str]) -> None:
    phase_setup(ctx, binary, env)
    phase_rotation_load(ctx)
    phase_kill_mid_rotation(ctx)
    phase_revocation(ctx, "revocation A", predecessor_in_grace=False)
    cluster_checks(ctx, "so far")
    summary(ctx)
    # Last, because it is the sharpest case: the same promise as revocation A, with the
    # revoked key's predecessor retired but still published (within its retire grace).
    phase_revocation(ctx, "revocation B", predecessor_in_grace=True)
    cluster_checks(ctx, "overall")
    summary(ctx)


def cluster_checks(ctx: Ctx, label: str) -> None:
    # The same-kid invariant over every token issued, outside the revocation windows.
    across, within, skipped, shared = same_iat_violations(ctx.issued, ctx.revocation_windows)
    ctx.same_iat = (len(across), len(within))
    info(f"same-iat check ({label}): {len(ctx.issued)} tokens, {shared} seconds with tokens from several replicas, {skipped} tokens in revocation windows left out")
    check(f"{label}: same iat from different replicas ⇒ same kid (0 violations, got {len(across)})", not across, "\n".join(across[:20]))
    check(f"{label}: same iat from one replica ⇒ same kid (0 violations, got {len(within)})", not within, "\n".join(within[:20]))
    with ctx.lock:
        problems = list(ctx.problems)
    check(f"{label}: no 5xx or other surprise seen by background requests", not problems, "\n\n".join(problems[:5]))
    errors = [line for rep in ctx.replicas for line in rep.error_lines()]
    check(f"{label}: no ERROR lines in any replica's log", not errors, "\n".join(errors[:20]))


def summary(ctx: Ctx) -> None:
    p1 = ctx.phase1
    assert p1 is not None
    kids_all = {it.kid for it in ctx.issued if it.kid}
    lines = [
        f"rotation load: {p1.verified} tokens verified, {len(p1.kids)} distinct kids in them, {len(p1.failures)} failed verifications",
        f"all phases: {len(ctx.issued)} tokens, {len(kids_all)} distinct kids, JWKS fetched {ctx.verifier.fetches} times "
        f"({ctx.verifier.forced_fetches} forced refetches, all after revocations)",
        f"same-iat/different-kid violations: {ctx.same_iat[0]} across replicas, {ctx.same_iat[1]} within one",
        f"concurrent rotate: {ctx.concurrent_result}",
    ] + ctx.notes
    print("\nSUMMARY\n" + "\n".join(f"  {line}" for line in lines) + "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
