#!/usr/bin/env python3
"""Cluster test: two real Tessera replicas share their rate limits through Redis (DESIGN §6).

Two `tessera serve` processes share one PostgreSQL database and one Redis key prefix. Both
trust 127.0.0.1 as a proxy, so every phase speaks for client addresses of its own through
`X-Forwarded-For` (this script is that proxy), and both count in Redis, not in memory: a
replica that fell back to its own in-process limiter would let through twice the limit.

1. Per client address: LOGIN_PER_IP failed logins from one address, alternating between the
   replicas, answer 401 with `RateLimit-Policy` and a `RateLimit` whose `remaining` counts
   down across both; the next one answers 429 on either replica, with `Retry-After`; another
   address is unaffected.
2. Per account: case, whitespace and Unicode (NFKC) variants of one e-mail, each from a fresh
   address and alternating replicas, share one bucket; the same for an unknown e-mail, whose
   429 looks exactly like the registered one's.
3. Both replicas' /readyz report the Redis limiter, and the buckets are in Redis under the
   private prefix.

Usage:  TESSERA_BIN=target/debug/tessera .venv/bin/python tests/cluster/limits.py

Needs what tests/cluster/rotation.py needs (PostgreSQL and psql, Redis, Python 3.11+), whose
helpers it uses. Prints one line per check; on the first failed check prints the evidence and
the replicas' logs, cleans up and exits 1.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sys
import tempfile
import traceback

from rotation import (
    PG_ADMIN_URL,
    REDIS_URL,
    CheckFailed,
    Replica,
    Resp,
    check,
    http,
    info,
    ok,
    psql,
    redis_delete_prefix,
)

# The account limit is the looser one, so that in phase 1 (a new e-mail each time) the
# headers describe the address's bucket: a replica reports the bucket nearest to its limit.
LOGIN_PER_IP = 4
LOGIN_PER_ACCOUNT = 6
WINDOW_S = 60  # the policies below say 1m
PASSWORD = "cluster limits horse battery 41"


def login(rep: Replica, email: str, client: str, password: str = "not the password") -> Resp:
    return http(
        "POST",
        rep.base + "/v1/login",
        json_body={"email": email, "password": password},
        headers={"X-Forwarded-For": client},
    )


def check_limited(name: str, r: Resp, rep: Replica) -> None:
    """A 429 with the problem code, a whole-second Retry-After inside the window and an
    exhausted RateLimit."""
    retry = r.header("Retry-After") or ""
    check(
        name,
        r.status == 429
        and r.json_or_empty().get("code") == "rate_limited"
        and retry.isdigit()
        and 1 <= int(retry) <= WINDOW_S
        and "remaining=0" in (r.header("RateLimit") or ""),
        r.describe() + f"\n  Retry-After: {retry!r}\n  RateLimit: {r.header('RateLimit')!r}",
        [rep],
    )


def phase_per_address(a: Replica, b: Replica) -> None:
    client = "203.0.113.7"
    policy = f"{LOGIN_PER_IP};w={WINDOW_S}"
    for i in range(LOGIN_PER_IP):
        rep = (a, b)[i % 2]
        r = login(rep, f"ip-{i}@example.com", client)
        ratelimit = r.header("RateLimit") or ""
        check(
            f"address login {i + 1}/{LOGIN_PER_IP} on {rep.name} -> 401, RateLimit-Policy {policy}, remaining={LOGIN_PER_IP - 1 - i}",
            r.status == 401
            and r.header("RateLimit-Policy") == policy
            and ratelimit.startswith(f"limit={LOGIN_PER_IP}, remaining={LOGIN_PER_IP - 1 - i}"),
            r.describe() + f"\n  RateLimit-Policy: {r.header('RateLimit-Policy')!r}\n  RateLimit: {ratelimit!r}",
            [rep],
        )
    for rep in (a, b):
        check_limited(f"address login {LOGIN_PER_IP + 1} on {rep.name} -> 429 (the count is shared)", login(rep, "ip-x@example.com", client), rep)
    r = login(b, "ip-0@example.com", "203.0.113.8")
    check("another address on the same replicas -> 401, not limited", r.status == 401, r.describe(), [b])


def variants(local: str, domain: str) -> list[str]:
    """Spellings of one address that normalise to the same account: case, surrounding
    whitespace, and full-width letters (NFKC)."""

    def fullwidth(text: str) -> str:
        return "".join(chr(ord(c) - 0x21 + 0xFF01) if "!" <= c <= "~" else c for c in text)

    return [
        f"{local.upper()}@{domain.upper()}",
        f"  {local.capitalize()}@{domain.upper()} ",
        f"{fullwidth(local)}@{domain}",
        f"{fullwidth(local.upper())}@{domain.upper()}",
        f"{local}@{domain.upper()}",
        f"{local}@{domain}",
    ]


def phase_per_account(a: Replica, b: Replica, registered: str) -> None:
    local, domain = registered.split("@")
    limited: dict[str, Resp] = {}
    for n, (label, name) in enumerate((("registered", local), ("unknown", "nobody"))):
        emails = variants(name, domain)
        assert len(emails) == LOGIN_PER_ACCOUNT
        for i, email in enumerate(emails):
            rep = (a, b)[i % 2]
            r = login(rep, email, f"198.51.100.{10 * n + i + 1}")
            check(f"{label} account, variant {email!r} on {rep.name} from a fresh address -> 401", r.status == 401, r.describe(), [rep])
        r = login(b, f"{name}@{domain}", f"198.51.100.{90 + n}")
        check_limited(f"{label} account: attempt {LOGIN_PER_ACCOUNT + 1} from yet another address -> 429 (the variants share one bucket across replicas)", r, b)
        limited[label] = r
    shapes = {label: (r.status, r.json_or_empty().get("code"), r.json_or_empty().get("title"), r.header("RateLimit-Policy")) for label, r in limited.items()}
    check("the 429 of a registered and of an unknown account look the same", shapes["registered"] == shapes["unknown"], str(shapes))


def phase_redis(a: Replica, b: Replica, prefix: str) -> None:
    for rep in (a, b):
        r = http("GET", rep.base + "/readyz")
        backend = r.json_or_empty().get("checks", {}).get("rate_limits")
        check(f"{rep.name} /readyz reports rate_limits=redis", r.status == 200 and backend == "redis", r.describe(), [rep])
    # Counting the keys deletes them, so it comes last.
    deleted = redis_delete_prefix(prefix + "rl:")
    check(f"the buckets live in Redis under {prefix}rl: ({deleted} keys)", deleted >= 3, f"{deleted} keys")


def main() -> int:
    binary = os.environ.get("TESSERA_BIN")
    if not binary or not os.access(binary, os.X_OK):
        print(f"FAIL: set TESSERA_BIN to the tessera server binary (got {binary!r})", flush=True)
        return 2
    binary = os.path.abspath(binary)
    suffix = secrets.token_hex(6)
    db = f"tessera_limits_{suffix}"
    prefix = f"tessera-limits-{suffix}:"
    workdir = tempfile.mkdtemp(prefix="tessera-limits-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_") and k != "RUST_LOG"}
    env.update(
        {
            "TESSERA__DATABASE__URL": f"{PG_ADMIN_URL}/{db}",
            "TESSERA__REDIS__URL": REDIS_URL,
            "TESSERA__REDIS__KEY_PREFIX": prefix,
            "TESSERA__KEYS__KEK": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
            "TESSERA__PASSWORD__MEMORY_KIB": "1024",
            "TESSERA__PASSWORD__ITERATIONS": "1",
            "TESSERA__RATE_LIMITS__ENABLED": "true",
            "TESSERA__RATE_LIMITS__TRUSTED_PROXIES": "127.0.0.1/32",
            "TESSERA__RATE_LIMITS__LOGIN_PER_IP": f"{LOGIN_PER_IP}/1m",
            "TESSERA__RATE_LIMITS__LOGIN_PER_ACCOUNT": f"{LOGIN_PER_ACCOUNT}/1m",
            # Backoff is its own test (tests/limits.rs); here it must not answer first.
            "TESSERA__RATE_LIMITS__BACKOFF_AFTER": "1000",
            "TESSERA__LOG__LEVEL": "warn",
        }
    )
    a, b = (Replica(name, binary, workdir, env) for name in ("replica-a", "replica-b"))
    info(f"database={db} redis prefix={prefix} workdir={workdir} ports={[a.port, b.port]}")
    succeeded = db_created = False
    try:
        out = psql(f"CREATE DATABASE {db}")
        check(f"CREATE DATABASE {db}", out.returncode == 0, f"psql status {out.returncode}: {out.stderr.strip()}")
        db_created = True
        a.start()
        a.wait_ready("replica-a starts on the fresh database and /readyz -> 200")
        b.start()
        b.wait_ready("replica-b starts on the shared database and /readyz -> 200")
        registered = "lou@example.com"
        r = http("POST", a.base + "/v1/users", json_body={"email": registered, "password": PASSWORD}, headers={"X-Forwarded-For": "192.0.2.1"})
        check(f"register {registered} -> 201", r.status == 201, r.describe(), [a])
        phase_per_address(a, b)
        phase_per_account(a, b, registered)
        phase_redis(a, b, prefix)
        errors = [line for rep in (a, b) for line in rep.error_lines()]
        check("no ERROR lines in either replica's log", not errors, "\n".join(errors[:20]))
        succeeded = True
    except (CheckFailed, Exception) as e:
        print(f"FAIL  {e}" if isinstance(e, CheckFailed) else f"FAIL  unexpected {type(e).__name__}: {e}", flush=True)
        if not isinstance(e, CheckFailed):
            traceback.print_exc(file=sys.stdout)
        for rep in (a, b):
            print(rep.log_tail(), flush=True)
    finally:
        trouble = [t for rep in (a, b) for t in rep.stop_all()]
        if trouble:
            print("FAIL  both replicas exit cleanly on SIGTERM\n" + "\n".join(trouble), flush=True)
            succeeded = False
        if db_created:
            out = psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            if out.returncode != 0:
                print(f"FAIL  DROP DATABASE {db}: {out.stderr.strip()}", flush=True)
                succeeded = False
        try:
            redis_delete_prefix(prefix)
        except (OSError, RuntimeError, ValueError) as e:
            print(f"FAIL  deleting the Redis keys under {prefix}: {e}", flush=True)
            succeeded = False
        if succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"info  replica logs kept in {workdir}", flush=True)
    if succeeded:
        ok("all limit checks passed")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
