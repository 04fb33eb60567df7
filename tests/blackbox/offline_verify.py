#!/usr/bin/env python3
"""Black-box check of a real Tessera binary from the outside.

It plays the role of a sibling service written in another language: it registers a user,
logs in, verifies the access token *offline* with PyJWT against the published JWKS, and then
checks that the server's own online check (`GET /v1/me`) refuses forged tokens. It also
checks that signing keys survive a restart and that the server refuses to start with the
wrong key-encryption key (KEK) without printing that KEK.

Usage:  TESSERA_BIN=target/debug/tessera .venv/bin/python tests/blackbox/offline_verify.py

Needs Python 3.11+ and PyJWT[crypto] (see requirements.txt next to this file). Uses only
the standard library otherwise. Prints one line per check; on the first failure prints what
the server did, the tail of its log, keeps the temp directory for inspection and exits 1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any, NoReturn

try:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
except ImportError as exc:  # pragma: no cover - environment problem, not a test failure
    print(
        f"FAIL: cannot import PyJWT/cryptography ({exc}); "
        "install tests/blackbox/requirements.txt (make venv)",
        flush=True,
    )
    sys.exit(2)

READY_TIMEOUT_S = 60.0
# Exit timeouts: how long a refused start (wrong KEK) and a SIGTERM shutdown may take.
REFUSE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 60.0

EMAIL_REGISTER = "Alice.Blackbox@Example.COM "
EMAIL_LOGIN = "ALICE.blackbox@EXAMPLE.com"
EMAIL_NORMALISED = "alice.blackbox@example.com"
PASSWORD = "correct horse battery staple 42"
AUDIENCE = "api"
ALGORITHMS = ["ES256", "EdDSA", "RS256"]
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


# --------------------------------------------------------------------------- reporting


class CheckFailed(Exception):
    pass


def ok(name: str) -> None:
    print(f"PASS  {name}", flush=True)


def fail(name: str, detail: str = "") -> NoReturn:
    raise CheckFailed(f"{name}" + (f"\n{detail}" if detail else ""))


def check(name: str, cond: bool, detail: str = "") -> None:
    if not cond:
        fail(name, detail)
    ok(name)


# --------------------------------------------------------------------------- HTTP


# Never go through a proxy for 127.0.0.1 (PyJWKClient builds its own opener, which reads
# the *_proxy variables; no_proxy makes it bypass them too).
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

    def describe(self) -> str:
        body = self.body.decode("utf-8", errors="replace")
        if len(body) > 2000:
            body = body[:2000] + "…(truncated)"
        hdrs = "\n".join(f"    {k}: {v}" for k, v in self.headers.items())
        return f"  {self.method} {self.url} -> {self.status}\n  headers:\n{hdrs}\n  body: {body!r}"


def http(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Resp:
    """One request, no redirects followed for 3xx other than urllib's defaults, no raising
    on 4xx/5xx. `timeout=None` means block (only the readiness poll passes a bound)."""
    hdrs = dict(headers or {})
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return Resp(method, url, r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        try:
            body = e.read()
        finally:
            e.close()
        return Resp(method, url, e.code, e.headers, body)


def cache_directives(value: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.partition("=")
        out[k.strip().lower()] = v.strip().strip('"') if _ else None
    return out


def is_json_object(resp: Resp) -> bool:
    try:
        return isinstance(resp.json(), dict)
    except (ValueError, UnicodeDecodeError):
        return False


# --------------------------------------------------------------------------- base64 / JWT


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def public_key_from_jwk(jwk: dict[str, Any]) -> Any:
    """Build a `cryptography` public key from a JWK by hand (RFC 7518 §6, RFC 8037)."""

    def b64int(s: str) -> int:
        return int.from_bytes(b64url_decode(s), "big")

    kty = jwk.get("kty")
    if kty == "EC":
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        return ec.EllipticCurvePublicNumbers(
            b64int(jwk["x"]), b64int(jwk["y"]), curves[jwk["crv"]]
        ).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    if kty == "RSA":
        return rsa.RSAPublicNumbers(b64int(jwk["e"]), b64int(jwk["n"])).public_key()
    raise ValueError(f"unsupported JWK kty={kty!r} crv={jwk.get('crv')!r}")


def fresh_private_key(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def tamper_payload(token: str) -> tuple[str, str]:
    """Change exactly one character of the payload segment so that it still decodes to a
    JSON object with the same claim names but different content (so the server has to
    reject it on the signature, not on a parse error). Returns (token, description)."""
    h, p, s = token.split(".")
    orig_bytes = b64url_decode(p)
    orig = json.loads(orig_bytes)
    alphabet = string.ascii_letters + string.digits + "-_"
    mid = len(p) // 2
    positions = sorted(range(len(p) - 1), key=lambda i: abs(i - mid))
    for i in positions:
        for c in alphabet:
            if c == p[i]:
                continue
            cand = p[:i] + c + p[i + 1 :]
            try:
                dec = b64url_decode(cand)
                obj = json.loads(dec)
            except (ValueError, UnicodeDecodeError):
                continue
            if dec == orig_bytes or not isinstance(obj, dict) or set(obj) != set(orig):
                continue
            changed = sorted(k for k in obj if obj[k] != orig[k])
            return f"{h}.{cand}.{s}", f"payload char {i} {p[i]!r}->{c!r}, claims changed: {changed}"
    # Fallback: any one-character change that alters the decoded bytes.
    for i in positions:
        c = "A" if p[i] != "A" else "B"
        cand = p[:i] + c + p[i + 1 :]
        if b64url_decode(cand) != orig_bytes:
            return f"{h}.{cand}.{s}", f"payload char {i} {p[i]!r}->{c!r} (payload no longer JSON)"
    raise AssertionError("could not tamper with payload")


def tamper_signature(token: str) -> str:
    """Flip one bit in the middle of the decoded signature (changing a base64 character
    blindly can hit the unused trailing bits and leave the signature bytes identical)."""
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[len(sig) // 2] ^= 0x01
    return f"{h}.{p}.{b64url(bytes(sig))}"


def hs256_token(header: dict[str, Any], payload_segment: str, secret: bytes) -> str:
    signing_input = f"{b64url(compact_json(header))}.{payload_segment}".encode("ascii")
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode('ascii')}.{b64url(mac)}"


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary: str, workdir: str, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_path = ""
        self.err_path = ""

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # Nothing from the caller's Tessera configuration may leak into the test.
            if not (k.startswith("TESSERA__") or k == "TESSERA_CONFIG")
        }
        env.update(
            {
                "TESSERA__SERVER__PORT": str(self.port),
                "TESSERA__TOKENS__ISSUER": self.base,
                "TESSERA__PASSWORD__MEMORY_KIB": "1024",
                "TESSERA__PASSWORD__ITERATIONS": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(self, label: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.runs += 1
        self.out_path = os.path.join(self.workdir, f"serve-{self.runs}-{label}.stdout.log")
        self.err_path = os.path.join(self.workdir, f"serve-{self.runs}-{label}.stderr.log")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            proc = subprocess.Popen(
                [self.binary, "serve"],
                cwd=self.workdir,
                env=self.env(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # our signals, not the terminal's, reach it
            )
        self.procs.append(proc)
        self.proc = proc
        return proc

    def output(self) -> str:
        text = ""
        for path in (self.out_path, self.err_path):
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    text += f.read().decode("utf-8", errors="replace")
        return text

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.out_path, self.err_path):
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    tail = f.read().decode("utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- {os.path.basename(path)} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_ready(self, name: str) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                fail(name, f"server exited with status {rc} before /readyz said 200 (last: {last})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(name, f"/readyz not 200 within {READY_TIMEOUT_S:.0f} s (last: {last})")
            try:
                r = http("GET", self.base + "/readyz", timeout=min(2.0, remaining))
                if r.status == 200:
                    ok(name)
                    return
                last = f"status {r.status}, body {r.body[:300]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)

    def stop(self, name: str) -> int:
        """SIGTERM the current process and wait for it to exit."""
        assert self.proc is not None
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fail(name, f"server (pid {proc.pid}) did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM")
        ok(f"{name} (exit status {rc})")
        return rc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


# --------------------------------------------------------------------------- checks


def expect_401(server: Server, name: str, token: str | None) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    r = http("GET", server.base + "/v1/me", headers=headers)
    ctype = (r.header("Content-Type") or "").lower()
    good = (
        r.status == 401
        and ctype.startswith("application/problem+json")
        and is_json_object(r)
        and isinstance(r.json().get("code"), str)
        and r.json()["code"] != ""
    )
    if not good:
        fail(f"/v1/me rejects {name} with 401 problem+json carrying `code`", r.describe())
    ok(f"/v1/me rejects {name} with 401 problem+json (code={r.json()['code']!r})")


def login(server: Server, label: str) -> dict[str, Any]:
    r = http(
        "POST", server.base + "/v1/login", json_body={"email": EMAIL_LOGIN, "password": PASSWORD}
    )
    check(f"{label}: POST /v1/login (email in other case) -> 200", r.status == 200, r.describe())
    body = r.json() if is_json_object(r) else {}
    check(
        f"{label}: token response has access_token, token_type=Bearer, integer expires_in",
        isinstance(body.get("access_token"), str)
        and body["access_token"].count(".") == 2
        and body.get("token_type") == "Bearer"
        and type(body.get("expires_in")) is int
        and body["expires_in"] > 0,
        r.describe(),
    )
    cc = cache_directives(r.header("Cache-Control"))
    check(f"{label}: token response Cache-Control has no-store", "no-store" in cc, r.describe())
    return body


def verify_offline(
    label: str, token: str, issuer: str, jwks_uri: str, user_id: str, expires_in: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify like a sibling service would. Returns (header, claims)."""
    header = jwt.get_unverified_header(token)
    check(f"{label}: JWT header typ == at+jwt", header.get("typ") == "at+jwt", f"header: {header}")
    check(f"{label}: JWT header has a kid", isinstance(header.get("kid"), str) and header["kid"] != "", f"header: {header}")
    client = jwt.PyJWKClient(jwks_uri, cache_keys=False, timeout=None)  # type: ignore[arg-type]
    try:
        signing_key = client.get_signing_key_from_jwt(token)
    except jwt.PyJWTError as e:  # PyJWKClientError, PyJWKSetError (no usable key), ...
        fail(f"{label}: kid {header.get('kid')!r} found in the JWKS via PyJWKClient", repr(e))
    ok(f"{label}: kid {header['kid']!r} found in the JWKS via PyJWKClient")
    check(
        f"{label}: JWK alg matches JWT header alg ({header.get('alg')})",
        signing_key.algorithm_name == header.get("alg") and header.get("alg") in ALGORITHMS,
        f"header alg {header.get('alg')!r}, JWK alg {signing_key.algorithm_name!r}",
    )
    try:
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=ALGORITHMS,
            audience=AUDIENCE,
            issuer=issuer,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as e:
        fail(f"{label}: PyJWT verifies the token offline (sig, iss, aud, exp, nbf, required claims)", repr(e))
    ok(f"{label}: PyJWT verifies the token offline (sig, iss, aud, exp, nbf, required claims)")
    check(f"{label}: sub == registered user id", claims.get("sub") == user_id, f"sub {claims.get('sub')!r} vs id {user_id!r}")
    if expires_in is not None:
        check(
            f"{label}: exp - iat == expires_in ({expires_in})",
            claims["exp"] - claims["iat"] == expires_in,
            f"exp {claims['exp']} iat {claims['iat']} expires_in {expires_in}",
        )
    return header, claims


def fetch_jwks(label: str, jwks_uri: str) -> dict[str, Any]:
    r = http("GET", jwks_uri)
    check(f"{label}: GET jwks_uri -> 200 JSON with keys", r.status == 200 and is_json_object(r) and isinstance(r.json().get("keys"), list), r.describe())
    return r.json()


def main() -> int:
    binary = os.environ.get("TESSERA_BIN")
    if not binary:
        print("FAIL: set TESSERA_BIN to the tessera server binary", flush=True)
        return 2
    binary = os.path.abspath(binary)
    if not os.access(binary, os.X_OK):
        print(f"FAIL: TESSERA_BIN={binary} is not an executable file", flush=True)
        return 2

    # A SIGTERM to this script (e.g. a cancelled CI job) still runs the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = tempfile.mkdtemp(prefix="tessera-blackbox-")
    port = free_port()
    server = Server(binary, workdir, port)
    print(f"info  binary={binary} workdir={workdir} port={port}", flush=True)
    succeeded = False
    try:
        run_checks(server)
        succeeded = True
    except (CheckFailed, Exception) as e:
        if isinstance(e, CheckFailed):
            print(f"FAIL  {e}", flush=True)
        else:
            # A response the checks did not anticipate (wrong shape, bad JSON, ...).
            print(f"FAIL  unexpected {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        tail = server.log_tail()
        if tail:
            print(tail, flush=True)
        print(f"info  server logs and data kept in {workdir}", flush=True)
    finally:
        server.kill_all()
        if succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
    if succeeded:
        print("all black-box checks passed", flush=True)
        return 0
    return 1


def run_checks(server: Server) -> None:
    base = server.base
    expected_issuer = base

    # ---- first start
    server.start("first")
    server.wait_ready("server #1 starts in an empty directory and /readyz -> 200")

    # ---- registration
    r = http("POST", base + "/v1/users", json_body={"email": EMAIL_REGISTER, "password": PASSWORD})
    check("POST /v1/users -> 201", r.status == 201, r.describe())
    user = r.json() if is_json_object(r) else {}
    check(
        "registration body has id, email, created_at",
        all(isinstance(user.get(k), str) and user[k] for k in ("id", "email", "created_at")),
        r.describe(),
    )
    check(
        f"registered email normalised to {EMAIL_NORMALISED!r}",
        user["email"] == EMAIL_NORMALISED,
        f"got {user['email']!r}",
    )
    user_id = user["id"]

    # ---- login
    tok = login(server, "login #1")
    token = tok["access_token"]

    # ---- discovery
    r = http("GET", base + "/.well-known/openid-configuration")
    check("GET /.well-known/openid-configuration -> 200 JSON", r.status == 200 and is_json_object(r), r.describe())
    meta = r.json()
    issuer, jwks_uri = meta.get("issuer"), meta.get("jwks_uri")
    check(f"discovery issuer == configured issuer {expected_issuer!r}", issuer == expected_issuer, f"issuer {issuer!r}")
    check("discovery has a jwks_uri", isinstance(jwks_uri, str) and jwks_uri.startswith("http"), f"jwks_uri {jwks_uri!r}")

    # ---- offline verification
    header, claims = verify_offline("token #1", token, issuer, jwks_uri, user_id, tok["expires_in"])
    kid = header["kid"]

    # ---- JWKS directly
    r = http("GET", jwks_uri)
    check("GET jwks_uri -> 200 JSON with a keys array", r.status == 200 and is_json_object(r) and isinstance(r.json().get("keys"), list) and r.json()["keys"], r.describe())
    jwks = r.json()
    cc = cache_directives(r.header("Cache-Control"))
    check("JWKS Cache-Control has public and max-age", "public" in cc and "max-age" in cc, r.describe())
    etag = r.header("ETag")
    check("JWKS response carries an ETag", bool(etag), r.describe())
    assert etag is not None
    r304 = http("GET", jwks_uri, headers={"If-None-Match": etag})
    check("JWKS with If-None-Match: <etag> -> 304", r304.status == 304, r304.describe())
    head = http("HEAD", jwks_uri)
    check(
        "HEAD jwks_uri -> 200, no body, the GET's ETag and Content-Length",
        head.status == 200
        and head.body == b""
        and head.header("ETag") == etag
        and head.header("Content-Length") == str(len(r.body)),
        head.describe(),
    )
    leaked = [
        (k.get("kid"), m) for k in jwks["keys"] for m in PRIVATE_JWK_MEMBERS if isinstance(k, dict) and m in k
    ]
    check("no JWK carries a private member (d, p, q, dp, dq, qi, oth, k)", not leaked, f"private members: {leaked}")
    bad = [
        k
        for k in jwks["keys"]
        if not (
            isinstance(k, dict)
            and all(isinstance(k.get(f), str) and k[f] for f in ("kty", "kid", "alg"))
            and k.get("use") == "sig"
        )
    ]
    check("every JWK has kty, kid, alg and use == sig", not bad, f"offending keys: {bad}")
    matching = [k for k in jwks["keys"] if k.get("kid") == kid]
    check(f"token kid {kid!r} is in the JWKS fetched directly, exactly once", len(matching) == 1, f"kids: {[k.get('kid') for k in jwks['keys']]}")
    real_jwk = matching[0]

    # ---- online check
    r = http("GET", base + "/v1/me", headers={"Authorization": f"Bearer {token}"})
    check("GET /v1/me with the token -> 200", r.status == 200 and is_json_object(r), r.describe())
    me = r.json()
    check(f"/v1/me email == {EMAIL_NORMALISED!r}", me.get("email") == EMAIL_NORMALISED, r.describe())
    if "id" in me:
        check("/v1/me id == registered id", me["id"] == user_id, r.describe())

    # ---- forgeries
    h_seg, p_seg, _ = token.split(".")
    expect_401(server, "a request with no Authorization header", None)

    tampered, how = tamper_payload(token)
    print(f"info  tampered payload: {how}", flush=True)
    expect_401(server, "a token with one payload character changed", tampered)

    expect_401(server, "a token with its signature changed", tamper_signature(token))

    for alg in ("none", "None", "NONE"):
        none_header = {"alg": alg, "typ": "at+jwt", "kid": kid}
        expect_401(server, f"an alg={alg!r} token with the real kid and empty signature", f"{b64url(compact_json(none_header))}.{p_seg}.")

    pub = public_key_from_jwk(real_jwk)
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    for desc, secret in (
        ("its public key PEM", pem),
        ("its public key PEM without trailing newline", pem.rstrip(b"\n")),
        ("its public key DER", der),
    ):
        expect_401(server, f"an HS256 token keyed with {desc} (real kid)", hs256_token(hs_header, p_seg, secret))

    fresh_ec = ec.generate_private_key(ec.SECP256R1())
    unknown_kid = "blackbox-" + secrets.token_hex(8)
    forged = jwt.encode(claims, fresh_ec, algorithm="ES256", headers={"kid": unknown_kid, "typ": "at+jwt"})
    expect_401(server, f"an ES256 token from a fresh P-256 key with unknown kid {unknown_kid!r}", forged)

    real_alg = header["alg"]
    fresh_same = fresh_ec if real_alg == "ES256" else fresh_private_key(real_alg)
    forged = jwt.encode(claims, fresh_same, algorithm=real_alg, headers={"kid": kid, "typ": "at+jwt"})
    expect_401(server, f"an {real_alg} token from a fresh key carrying the REAL kid", forged)

    # Sanity: the untouched token is still accepted after all that (no lockout side effects).
    r = http("GET", base + "/v1/me", headers={"Authorization": f"Bearer {token}"})
    check("the genuine token still gets 200 at /v1/me after the forgeries", r.status == 200, r.describe())

    # ---- restart: keys and users survive
    server.stop("server #1 exits on SIGTERM")
    server.start("restart")
    server.wait_ready("server #2 restarts in the same directory and /readyz -> 200")
    tok2 = login(server, "login #2 after restart")
    verify_offline("token #2 after restart", tok2["access_token"], issuer, jwks_uri, user_id, tok2["expires_in"])
    r = http("GET", base + "/v1/me", headers={"Authorization": f"Bearer {token}"})
    check("after restart: the OLD access token still gets 200 at /v1/me", r.status == 200, r.describe())
    jwks2 = fetch_jwks("after restart", jwks_uri)
    check(
        f"after restart: JWKS still publishes the old kid {kid!r}",
        any(isinstance(k, dict) and k.get("kid") == kid for k in jwks2["keys"]),
        f"kids: {[k.get('kid') for k in jwks2['keys'] if isinstance(k, dict)]}",
    )
    verify_offline("OLD token #1 after restart", token, issuer, jwks_uri, user_id, tok["expires_in"])

    # ---- wrong KEK: refuse to start, say why, never print the KEK
    server.stop("server #2 exits on SIGTERM")
    kek_bytes = secrets.token_bytes(32)
    kek_b64 = base64.b64encode(kek_bytes).decode("ascii")
    proc = server.start("wrong-kek", {"TESSERA__KEYS__KEK": kek_b64})
    try:
        rc = proc.wait(timeout=REFUSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        fail(
            "server with a wrong KEK exits on its own",
            f"still running after {REFUSE_TIMEOUT_S:.0f} s with TESSERA__KEYS__KEK set to a fresh random key; killed it",
        )
    check(f"server with a wrong KEK exits non-zero within {REFUSE_TIMEOUT_S:.0f} s (status {rc})", rc != 0, f"exit status {rc}")
    out = server.output()
    check("wrong-KEK output mentions KEK", "kek" in out.lower(), f"combined output:\n{out[-3000:]}")
    leaks = [
        name
        for name, form in (
            ("base64", kek_b64),
            ("unpadded base64", kek_b64.rstrip("=")),
            ("base64url", base64.urlsafe_b64encode(kek_bytes).decode("ascii").rstrip("=")),
            ("hex", kek_bytes.hex()),
        )
        if form in out or (name == "hex" and form.upper() in out)
    ]
    check("wrong-KEK output does not contain the KEK (base64, unpadded, base64url or hex)", not leaks, f"found forms: {leaks}")

    # ---- extra: the refused start destroyed nothing; the right KEK still works
    server.start("after-wrong-kek")
    server.wait_ready("server #4 with the original KEK starts again after the refused start")
    r = http("GET", base + "/v1/me", headers={"Authorization": f"Bearer {token}"})
    check("after the refused start: the OLD access token still gets 200 at /v1/me", r.status == 200, r.describe())
    server.stop("server #4 exits on SIGTERM")
    check(
        "embedded default keeps its SQLite database under ./data/ (data/tessera.db exists)",
        os.path.isfile(os.path.join(server.workdir, "data", "tessera.db")),
        f"contents of data/: {sorted(os.listdir(os.path.join(server.workdir, 'data'))) if os.path.isdir(os.path.join(server.workdir, 'data')) else 'no data/ directory'}",
    )


if __name__ == "__main__":
    sys.exit(main())
