#!/usr/bin/env node
// Drives a real Chromium (through playwright-core) through Tessera's browser flow: log in,
// refresh through the HttpOnly cookie, the CSRF and cross-origin defences, log out.
//
// Run by tests/browser.rs, which starts the server and registers the user. By hand:
//
//   TESSERA_API=http://localhost:P PAGE_PORT=Q OTHER_PORT=R \
//   TESSERA_EMAIL=... TESSERA_PASSWORD=... OUT_DIR=/some/empty/dir \
//   node tests/browser/drive.mjs
//
// The server must run with TESSERA__COOKIES__REFRESH_COOKIE=true and
// TESSERA__CORS__ALLOWED_ORIGINS=http://localhost:Q. This script serves index.html and
// app.js itself on 127.0.0.1:Q (visited as http://localhost:Q: same site as the API,
// another origin) and on 127.0.0.1:R (visited as http://127.0.0.1:R: another site, not an
// allowed origin). CHROMIUM overrides /usr/bin/chromium.
//
// Prints one PASS line per check; on the first failure prints what the server and the
// browser did and exits 1. Always screenshots the page into OUT_DIR and prints the path.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const COOKIE = 'tessera_refresh';
const COOKIE_PATH = '/v1/token';
const DEADLINE_MS = 150_000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAIL: environment variable ${name} is required (see the top of drive.mjs)`);
    process.exit(2);
  }
  return v;
}

const API = need('TESSERA_API').replace(/\/+$/, '');
const PAGE_PORT = Number(need('PAGE_PORT'));
const OTHER_PORT = Number(need('OTHER_PORT'));
const EMAIL = need('TESSERA_EMAIL');
const PASSWORD = need('TESSERA_PASSWORD');
const OUT_DIR = need('OUT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const API_HOST = new URL(API).hostname;

const PAGE_ORIGIN = `http://localhost:${PAGE_PORT}`;
const OTHER_ORIGIN = `http://127.0.0.1:${OTHER_PORT}`;
const pageUrl = (origin, dir = '') => `${origin}${dir}/index.html?api=${encodeURIComponent(API)}`;

// ------------------------------------------------------------------------- reporting

class CheckFailed extends Error {}

function pass(name) {
  console.log(`PASS  ${name}`);
}

function check(name, cond, detail = '') {
  if (!cond) throw new CheckFailed(name + (detail ? `\n${detail}` : ''));
  pass(name);
}

function info(text) {
  console.log(`      ${text}`);
}

const show = (v) => JSON.stringify(v, null, 2).replace(/\n/g, '\n  ');

// ------------------------------------------------------------------------- static pages

const FILES = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
};

// Serves index.html and app.js under any directory (so /v1/token/index.html exists too:
// a page inside the cookie's path, where only HttpOnly keeps the cookie from scripts).
function staticServer(port) {
  const server = http.createServer((req, res) => {
    const name = path.posix.basename(new URL(req.url, 'http://x').pathname);
    const type = Object.hasOwn(FILES, name) ? FILES[name] : undefined;
    if (req.method !== 'GET' || !type) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(fs.readFileSync(path.join(HERE, name)));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

// ------------------------------------------------------------------------- browser helpers

async function refreshCookies(context) {
  return (await context.cookies()).filter((c) => c.name === COOKIE);
}

async function theCookie(context, name) {
  const all = await refreshCookies(context);
  check(name, all.length === 1, `browser cookies named ${COOKIE}: ${show(all)}`);
  return all[0];
}

async function noCookie(context, name) {
  const all = await refreshCookies(context);
  check(name, all.length === 0, `browser still holds: ${show(all)}`);
}

// Everything the page's network did that touched the API, for failure reports.
function recordNetwork(page, label, sink) {
  page.on('response', async (r) => {
    if (!r.url().startsWith(API)) return;
    const entry = { page: label, method: r.request().method(), url: r.url(), status: r.status() };
    sink.push(entry);
    try {
      entry.headers = await r.headersArray();
    } catch (e) {
      entry.headers = `(unavailable: ${e.message})`;
    }
  });
  page.on('requestfailed', (r) => {
    if (!r.url().startsWith(API)) return;
    sink.push({ page: label, method: r.method(), url: r.url(), failed: r.failure()?.errorText });
  });
}

// Runs `action` (a page.evaluate) and returns its result together with what the network saw
// for the matching request: the response (status, headers, body, request headers) if one
// arrived, or the failure text.
async function observed(page, method, pathname, action) {
  const url = API + pathname;
  const match = (r) => r.url().split('?')[0] === url && r.method() === method;
  const done = new Promise((resolve) => {
    const onFinished = (r) => { if (match(r)) { off(); resolve({ request: r }); } };
    const onFailed = (r) => { if (match(r)) { off(); resolve({ request: r, failure: r.failure()?.errorText }); } };
    const timer = setTimeout(() => { off(); resolve({ timeout: true }); }, 10_000);
    const off = () => {
      clearTimeout(timer);
      page.off('requestfinished', onFinished);
      page.off('requestfailed', onFailed);
    };
    page.on('requestfinished', onFinished);
    page.on('requestfailed', onFailed);
  });
  const result = await action();
  const seen = await done;
  const net = { failure: seen.failure ?? null, timeout: !!seen.timeout, playwrightSawRequest: !!seen.request };
  if (seen.request) {
    net.requestHeaders = await seen.request.allHeaders().catch((e) => `(unavailable: ${e.message})`);
    const resp = await seen.request.response().catch(() => null);
    if (resp) {
      net.status = resp.status();
      net.headers = await resp.headersArray().catch((e) => `(unavailable: ${e.message})`);
      net.setCookie = await resp.headerValues('set-cookie').catch(() => []);
      net.body = await resp.text().catch((e) => `(unavailable: ${e.message})`);
    }
  }
  return { result, net };
}

// Chromium's own view of the network (CDP), for the foreign-origin page: Playwright does not
// surface CORS preflights, nor responses the CORS check withheld, nor why a cookie was not
// sent. Returns a function that lists, per request to the API, what Chromium recorded.
async function cdpNetworkLog(context, page) {
  const cdp = await context.newCDPSession(page);
  const byId = new Map();
  const get = (id) => {
    if (!byId.has(id)) byId.set(id, { requestId: id });
    return byId.get(id);
  };
  cdp.on('Network.requestWillBeSent', (e) => {
    if (!e.request.url.startsWith(API)) return;
    Object.assign(get(e.requestId), { method: e.request.method, url: e.request.url, type: e.type });
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    const r = get(e.requestId);
    r.sentHeaders = e.headers;
    r.cookies = (e.associatedCookies || []).map((c) => ({ name: c.cookie.name, blockedReasons: c.blockedReasons }));
  });
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    const r = get(e.requestId);
    r.status = e.statusCode;
    r.responseHeaders = e.headers;
  });
  cdp.on('Network.loadingFailed', (e) => {
    const r = get(e.requestId);
    r.failed = e.errorText;
    if (e.corsErrorStatus) r.corsError = e.corsErrorStatus.corsError;
  });
  await cdp.send('Network.enable');
  return () => [...byId.values()].filter((r) => r.url);
}

const describe = (what, { result, net }) =>
  `${what}\n  page saw: ${show(result)}\n  network saw: ${show(net)}`;

function parseSetCookie(line) {
  const [pair, ...attrs] = line.split(';').map((s) => s.trim());
  const eq = pair.indexOf('=');
  const out = { name: pair.slice(0, eq), value: pair.slice(eq + 1), attrs: {} };
  for (const a of attrs) {
    const i = a.indexOf('=');
    const k = (i < 0 ? a : a.slice(0, i)).toLowerCase();
    out.attrs[k] = i < 0 ? true : a.slice(i + 1);
  }
  return out;
}

function refreshSetCookies(net) {
  return (net.setCookie || []).map(parseSetCookie).filter((c) => c.name === COOKIE);
}

const clearsCookie = (c) =>
  c.value === '' && (c.attrs['max-age'] === '0' || (c.attrs.expires && Date.parse(c.attrs.expires) < Date.now()));

// ------------------------------------------------------------------------- the flow

async function run(context, page, network) {
  const T = (fn, ...args) => page.evaluate(fn, ...args);

  await page.goto(pageUrl(PAGE_ORIGIN));
  check(`page ${PAGE_ORIGIN} loads with the API at ${API}`, (await T(() => window.tessera && window.tessera.api)) === API);

  // --- 2. login --------------------------------------------------------------------------
  const login = await observed(page, 'POST', '/v1/login', () =>
    T(([e, p]) => window.tessera.login(e, p), [EMAIL, PASSWORD]));
  const lr = login.result;
  check('POST /v1/login from the allowed origin -> 200, readable by the page', lr.status === 200, describe('login', login));
  check('login body has an access_token (Bearer)',
    typeof lr.body?.access_token === 'string' && lr.body.access_token.length > 20 && lr.body.token_type === 'Bearer',
    describe('login', login));
  check('login body has NO refresh_token (it went into the cookie)',
    lr.body && !Object.hasOwn(lr.body, 'refresh_token'), describe('login', login));
  const loginSet = refreshSetCookies(login.net);
  check(`login response sets ${COOKIE} with HttpOnly, Secure, SameSite=Strict, Path=${COOKIE_PATH}, Max-Age`,
    loginSet.length === 1 && loginSet[0].value.length > 0 && loginSet[0].attrs.httponly === true &&
      loginSet[0].attrs.secure === true && String(loginSet[0].attrs.samesite).toLowerCase() === 'strict' &&
      loginSet[0].attrs.path === COOKIE_PATH && Number(loginSet[0].attrs['max-age']) > 0 &&
      loginSet[0].attrs.domain === undefined,
    describe('login', login));
  const c1 = await theCookie(context, `the browser stored exactly one ${COOKIE} cookie`);
  check(`cookie attributes in the browser: httpOnly, secure, sameSite Strict, path ${COOKIE_PATH}, host-only ${API_HOST}, persistent`,
    c1.httpOnly === true && c1.secure === true && c1.sameSite === 'Strict' && c1.path === COOKIE_PATH &&
      c1.domain === API_HOST && c1.expires > Date.now() / 1000,
    show(c1));
  check('the cookie value is the refresh token from Set-Cookie', c1.value === loginSet[0].value, show({ c1, loginSet }));
  const access1 = lr.body.access_token;

  const docCookie = await T(() => document.cookie);
  check(`document.cookie on ${PAGE_ORIGIN}/index.html does not show ${COOKIE}`,
    !docCookie.includes(COOKIE) && !docCookie.includes(c1.value), `document.cookie = ${JSON.stringify(docCookie)}`);
  // A page of the same host inside the cookie's path: path matching would let it see the
  // cookie; only HttpOnly hides it (cookies do not isolate by port).
  const probe = await context.newPage();
  await probe.goto(pageUrl(`http://${API_HOST}:${PAGE_PORT}`, COOKIE_PATH));
  const probeCookie = await probe.evaluate(() => document.cookie);
  await probe.close();
  check(`document.cookie on a page under ${COOKIE_PATH} on the same host does not show it (HttpOnly)`,
    !probeCookie.includes(COOKIE) && !probeCookie.includes(c1.value), `document.cookie = ${JSON.stringify(probeCookie)}`);

  const me1 = await T((a) => window.tessera.me(a), access1);
  check('GET /v1/me with the bearer -> 200 with the user',
    me1.status === 200 && me1.body?.email === EMAIL.trim().toLowerCase(), show(me1));

  // --- 3. refresh through the cookie ---------------------------------------------------
  const r1 = await observed(page, 'POST', '/v1/token', () => T(() => window.tessera.refresh({ csrf: true })));
  check('POST /v1/token grant_type=refresh_token with the cookie and X-Tessera-CSRF -> 200',
    r1.result.status === 200, describe('refresh', r1));
  check('the browser sent the cookie with the refresh',
    typeof r1.net.requestHeaders?.cookie === 'string' && r1.net.requestHeaders.cookie.includes(`${COOKIE}=${c1.value}`),
    describe('refresh', r1));
  const access2 = r1.result.body?.access_token;
  check('refresh body: a new access token, no refresh_token',
    typeof access2 === 'string' && access2 !== access1 && !Object.hasOwn(r1.result.body, 'refresh_token'),
    describe('refresh', r1));
  const c2 = await theCookie(context, `after the refresh the browser holds one ${COOKIE} cookie`);
  check('the cookie was rotated (new value, same attributes)',
    c2.value !== c1.value && c2.httpOnly && c2.secure && c2.sameSite === 'Strict' && c2.path === COOKIE_PATH,
    show({ before: c1, after: c2 }));
  const me2 = await T((a) => window.tessera.me(a), access2);
  check('GET /v1/me with the refreshed access token -> 200', me2.status === 200, show(me2));

  // The same request without the CSRF header is a "simple" CORS request: no preflight, it
  // reaches the server with the cookie, and the server must refuse it.
  const noCsrf = await observed(page, 'POST', '/v1/token', () => T(() => window.tessera.refresh({ csrf: false })));
  check('a cookie refresh WITHOUT X-Tessera-CSRF reached the server carrying the cookie (simple request, no preflight)',
    noCsrf.net.playwrightSawRequest && typeof noCsrf.net.requestHeaders?.cookie === 'string' &&
      noCsrf.net.requestHeaders.cookie.includes(`${COOKIE}=${c2.value}`),
    describe('refresh without CSRF header', noCsrf));
  check('the server refused it: 403 invalid_request (seen on the network)',
    noCsrf.net.status === 403 && JSON.parse(noCsrf.net.body || '{}').error === 'invalid_request',
    describe('refresh without CSRF header', noCsrf));
  check('...and the allowed-origin page could read that 403 invalid_request',
    noCsrf.result.status === 403 && noCsrf.result.body?.error === 'invalid_request',
    describe('refresh without CSRF header', noCsrf));
  check('the refused response sets no cookie', refreshSetCookies(noCsrf.net).length === 0,
    describe('refresh without CSRF header', noCsrf));
  const c3 = await theCookie(context, `after the refused refresh the browser still holds one ${COOKIE}`);
  check('the refused refresh did not rotate the cookie', c3.value === c2.value, show({ before: c2, after: c3 }));

  // --- 4. a page of another site, not an allowed origin ---------------------------------
  const other = await context.newPage();
  recordNetwork(other, OTHER_ORIGIN, network);
  const chromiumSaw = await cdpNetworkLog(context, other);
  await other.goto(pageUrl(OTHER_ORIGIN));
  check(`page ${OTHER_ORIGIN} (another site, not an allowed origin) loads`,
    (await other.evaluate(() => window.tessera && window.tessera.api)) === API);
  const since = async (n) => {
    await other.waitForTimeout(200); // let the last CDP events arrive
    return chromiumSaw().slice(n);
  };
  const acao = (headers) => Object.entries(headers || {}).find(([k]) => k.toLowerCase() === 'access-control-allow-origin')?.[1];

  // With the CSRF header: a preflight, which a foreign origin must not pass.
  let n = chromiumSaw().length;
  const xCsrf = await observed(other, 'POST', '/v1/token', () => other.evaluate(() => window.tessera.refresh({ csrf: true })));
  const csrfSaw = await since(n);
  const xCsrfReport = describe(`refresh from ${OTHER_ORIGIN} with X-Tessera-CSRF`, xCsrf) +
    `\n  chromium saw: ${show(csrfSaw)}`;
  check(`${OTHER_ORIGIN}: refresh with X-Tessera-CSRF -> fetch rejected, nothing readable`,
    typeof xCsrf.result.error === 'string' && xCsrf.result.status === undefined, xCsrfReport);
  const preflight = csrfSaw.find((r) => r.method === 'OPTIONS');
  const csrfPost = csrfSaw.find((r) => r.method === 'POST');
  check(`${OTHER_ORIGIN}: the server's preflight answer grants no CORS (no Access-Control-Allow-Origin)`,
    preflight && preflight.status !== undefined && acao(preflight.responseHeaders) === undefined, xCsrfReport);
  check(`${OTHER_ORIGIN}: so the POST itself never reached the server`,
    csrfPost && csrfPost.status === undefined && csrfPost.sentHeaders === undefined && !!csrfPost.corsError, xCsrfReport);
  info(`preflight -> ${preflight.status}; POST blocked by Chromium: ${csrfPost.corsError}`);

  // Without it: a simple request, sent, but the SameSite=Strict cookie stays home.
  n = chromiumSaw().length;
  const xSimple = await observed(other, 'POST', '/v1/token', () => other.evaluate(() => window.tessera.refresh({ csrf: false })));
  const simpleSaw = await since(n);
  const xSimpleReport = describe(`refresh from ${OTHER_ORIGIN} without X-Tessera-CSRF`, xSimple) +
    `\n  chromium saw: ${show(simpleSaw)}`;
  check(`${OTHER_ORIGIN}: refresh without the header -> fetch rejected, nothing readable`,
    typeof xSimple.result.error === 'string' && xSimple.result.status === undefined, xSimpleReport);
  const simplePost = simpleSaw.find((r) => r.method === 'POST');
  const sentCookie = Object.entries(simplePost?.sentHeaders || {}).find(([k]) => k.toLowerCase() === 'cookie')?.[1] || '';
  const blocked = simplePost?.cookies?.find((c) => c.name === COOKIE);
  check(`${OTHER_ORIGIN}: the request reached the server WITHOUT ${COOKIE} (Chromium blocked it as SameSite=Strict cross-site)`,
    simplePost && simplePost.sentHeaders && !sentCookie.includes(COOKIE) &&
      blocked && blocked.blockedReasons.some((r) => /SameSiteStrict/.test(r)),
    xSimpleReport);
  check(`${OTHER_ORIGIN}: the server answered it without a token and without Access-Control-Allow-Origin`,
    simplePost.status !== undefined && simplePost.status !== 200 && acao(simplePost.responseHeaders) === undefined,
    xSimpleReport);
  info(`server -> ${simplePost.status}; cookie blocked for: ${blocked.blockedReasons.join(', ')}; Chromium: ${simplePost.corsError}`);

  const c4 = await theCookie(context, `after the ${OTHER_ORIGIN} attempts the browser still holds one ${COOKIE}`);
  check(`the ${OTHER_ORIGIN} attempts did not rotate the cookie`, c4.value === c2.value, show({ before: c2, after: c4 }));
  await other.screenshot({ path: path.join(OUT_DIR, 'browser-other-origin.png'), fullPage: true });
  await other.close();

  // The refused attempts did not burn the session: the cookie still refreshes.
  const r2 = await observed(page, 'POST', '/v1/token', () => T(() => window.tessera.refresh({ csrf: true })));
  check('back on the allowed origin the cookie still refreshes -> 200', r2.result.status === 200, describe('refresh', r2));
  const access3 = r2.result.body?.access_token;
  const c5 = await theCookie(context, `the browser holds one ${COOKIE}`);
  check('...and rotates it again', c5.value !== c2.value, show({ before: c2, after: c5 }));

  // --- 5. logout -------------------------------------------------------------------------
  const lo = await observed(page, 'POST', '/v1/logout', () => T((a) => window.tessera.logout(a), access3));
  check('POST /v1/logout with the bearer -> 204', lo.result.status === 204, describe('logout', lo));
  const loSet = refreshSetCookies(lo.net);
  check(`the logout response clears ${COOKIE} (empty value, Max-Age=0, Path=${COOKIE_PATH})`,
    loSet.length === 1 && clearsCookie(loSet[0]) && loSet[0].attrs.path === COOKIE_PATH, describe('logout', lo));
  await noCookie(context, `after logout the browser dropped ${COOKIE}`);
  const meAfter = await T((a) => window.tessera.me(a), access3);
  check('GET /v1/me with the logged-out access token -> 401', meAfter.status === 401, show(meAfter));
  const meFirst = await T((a) => window.tessera.me(a), access1);
  info(`(not asserted) GET /v1/me with the login's access token, same session, other jti -> ${meFirst.status}`);

  const rNone = await observed(page, 'POST', '/v1/token', () => T(() => window.tessera.refresh({ csrf: true })));
  check('a refresh with no cookie left -> 400, no token', rNone.result.status === 400 && !rNone.result.body?.access_token,
    describe('refresh without cookie', rNone));
  info(`its error: ${JSON.stringify(rNone.result.body)}`);

  // The browser dropped the cookie; a copy of it (another tab's stale jar, a stolen value)
  // must be dead on the server too.
  await context.addCookies([{
    name: c5.name, value: c5.value, domain: c5.domain, path: c5.path, expires: c5.expires,
    httpOnly: c5.httpOnly, secure: c5.secure, sameSite: c5.sameSite,
  }]);
  await theCookie(context, `re-planted the pre-logout ${COOKIE} value in the browser`);
  const rDead = await observed(page, 'POST', '/v1/token', () => T(() => window.tessera.refresh({ csrf: true })));
  check('a refresh with the pre-logout cookie (and X-Tessera-CSRF) -> 400 invalid_grant',
    rDead.result.status === 400 && rDead.result.body?.error === 'invalid_grant', describe('refresh after logout', rDead));
  check('the browser did send that cookie',
    typeof rDead.net.requestHeaders?.cookie === 'string' && rDead.net.requestHeaders.cookie.includes(`${COOKIE}=${c5.value}`),
    describe('refresh after logout', rDead));
  const deadSet = refreshSetCookies(rDead.net);
  check(`the invalid_grant response clears ${COOKIE}`, deadSet.length === 1 && clearsCookie(deadSet[0]),
    describe('refresh after logout', rDead));
  await noCookie(context, `the browser dropped ${COOKIE} again`);
}

// ------------------------------------------------------------------------- main

async function main() {
  const deadline = setTimeout(() => {
    console.error(`FAIL: drive.mjs did not finish within ${DEADLINE_MS / 1000} s`);
    process.exit(1); // playwright-core kills the browser it launched on exit
  }, DEADLINE_MS);

  const servers = [await staticServer(PAGE_PORT), await staticServer(OTHER_PORT)];
  const profile = fs.mkdtempSync(path.join(OUT_DIR, 'chromium-profile-'));
  const network = [];
  let context;
  let page;
  let code = 0;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      viewport: { width: 1100, height: 900 },
    });
    info(`chromium ${context.browser()?.version() ?? '(version unknown)'} at ${CHROMIUM}, playwright-core, profile ${profile}`);
    page = context.pages()[0] ?? (await context.newPage());
    recordNetwork(page, PAGE_ORIGIN, network);
    page.on('console', (m) => info(`[page console] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => info(`[page error] ${e}`));
    await run(context, page, network);
    await page.evaluate(() => window.tessera.note('all checks passed'));
    console.log('OK: all browser checks passed');
  } catch (e) {
    code = 1;
    console.log(`FAIL  ${e instanceof CheckFailed ? e.message : e.stack || e}`);
    console.log(`API traffic seen by the browser:\n  ${show(network)}`);
    if (page) await page.evaluate((m) => window.tessera?.note('FAILED: ' + m), String(e.message).split('\n')[0]).catch(() => {});
  } finally {
    if (page) {
      const shot = path.join(OUT_DIR, 'browser-final.png');
      try {
        await page.screenshot({ path: shot, fullPage: true });
        console.log(`screenshot: ${shot}`);
      } catch (e) {
        console.log(`screenshot failed: ${e.message}`);
      }
    }
    if (context) await context.close().catch(() => {});
    for (const s of servers) s.close();
    fs.rmSync(profile, { recursive: true, force: true });
    clearTimeout(deadline);
  }
  process.exit(code);
}

main().catch((e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
