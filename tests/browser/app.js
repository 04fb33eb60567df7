// A minimal Tessera browser frontend: the API base comes from `?api=`; the access token is
// kept in memory; the refresh token travels only in the HttpOnly `tessera_refresh` cookie,
// which the browser sends to `${api}/v1/token` when `credentials: 'include'` is set.
// `tests/browser/drive.mjs` calls `window.tessera.*` through Playwright and checks results.
'use strict';

(function () {
  const api = (new URLSearchParams(location.search).get('api') || '').replace(/\/+$/, '');
  const logEl = document.getElementById('log');
  document.getElementById('origin').textContent = location.origin;
  document.getElementById('api').textContent = api || '(missing ?api=)';

  const short = (t) => (typeof t === 'string' && t.length > 24 ? t.slice(0, 20) + '…' : t);

  function log(label, result) {
    const li = document.createElement('li');
    const bad = result.error || result.status >= 400;
    li.className = bad ? 'fail' : 'ok';
    let what;
    if (result.error) {
      what = 'fetch rejected: ' + result.error;
    } else {
      const shown = result.body && typeof result.body === 'object'
        ? Object.fromEntries(Object.entries(result.body).map(([k, v]) => [k, k.endsWith('token') ? short(v) : v]))
        : result.body;
      what = result.status + ' ' + JSON.stringify(shown);
    }
    li.textContent = label + ' → ' + what;
    logEl.appendChild(li);
  }

  // One fetch; never throws. A rejected fetch (network or CORS failure) is `{error}`.
  async function call(label, path, init) {
    let result;
    try {
      const res = await fetch(api + path, init);
      const text = await res.text();
      let body = text;
      try { body = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
      result = { status: res.status, ok: res.ok, body };
    } catch (e) {
      result = { error: String(e && e.name ? e.name + ': ' + e.message : e) };
    }
    log(label, result);
    return result;
  }

  window.tessera = {
    api,
    note(text) {
      const li = document.createElement('li');
      li.textContent = text;
      logEl.appendChild(li);
    },
    login(email, password) {
      return call('POST /v1/login', '/v1/login', {
        method: 'POST',
        credentials: 'include',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email, password }),
      });
    },
    me(access) {
      return call('GET /v1/me', '/v1/me', {
        headers: { authorization: 'Bearer ' + access },
      });
    },
    // The browser adds the cookie; the CSRF header is what a same-site attacker cannot send
    // without passing a CORS preflight.
    refresh({ csrf }) {
      const headers = { 'content-type': 'application/x-www-form-urlencoded' };
      if (csrf) headers['X-Tessera-CSRF'] = '1';
      return call('POST /v1/token' + (csrf ? ' (with X-Tessera-CSRF)' : ' (no CSRF header)'), '/v1/token', {
        method: 'POST',
        credentials: 'include',
        headers,
        body: 'grant_type=refresh_token',
      });
    },
    logout(access) {
      return call('POST /v1/logout', '/v1/logout', {
        method: 'POST',
        credentials: 'include',
        headers: { authorization: 'Bearer ' + access },
      });
    },
  };
})();
