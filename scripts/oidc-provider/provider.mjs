// provider.mjs: a real OpenID Connect provider, which tether's tests use as the hub's identity
// provider. It is the npm package oidc-provider (9.x), not a fake: HTTPS on 127.0.0.1, discovery,
// JWKS, the Device Authorization Grant (RFC 8628) and refresh tokens. kube-apiserver v1.20
// accepts its id_tokens with --oidc-issuer-url, --oidc-client-id=tether, --oidc-ca-file,
// --oidc-username-claim=email and --oidc-groups-claim=groups.
//
// Installed (with its node_modules) outside the repo by scripts/oidc-provider.sh, and run there:
//
//   OIDC_TLS_CERT=cert.pem OIDC_TLS_KEY=key.pem OIDC_PORT=0 \
//   OIDC_USERS='alice:secret:alice@example.test:people|admins,bob:pw:bob@example.test:' \
//     node provider.mjs
//
// Environment:
//   OIDC_TLS_CERT, OIDC_TLS_KEY  PEM files of the serving certificate (for IP 127.0.0.1) and its key
//   OIDC_PORT                    port on 127.0.0.1; 0 (the default) lets the kernel choose
//   OIDC_USERS                   comma-separated user:password:email:group1|group2 (groups may be
//                                empty); the user name is the login and the id_token's sub
//
// One public client, `tether` (no secret; grants device_code and refresh_token), scopes openid,
// email, groups and offline_access. The id_token carries email, email_verified (true) and groups
// (conformIdTokenClaims is off: kube-apiserver reads only the id_token). Login and consent are
// this file's own pages, with a real password check (oidc-provider's devInteractions, which
// accept any password, are off). Keys, sessions and grants live in memory: a restart forgets
// them all.
//
// Once listening it prints exactly one line on stdout:
//   oidc provider listening issuer=https://127.0.0.1:PORT
// (the issuer is exactly what discovery says). Everything else (oidc-provider's notices, one
// line per request) goes to stderr. SIGTERM or SIGINT stops it.
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';

// oidc-provider prints its notices with console.info (stdout); stdout is reserved for the one
// listening line, so everything else goes to stderr. Imported after this, dynamically, so that
// nothing it does at load time can reach stdout either.
console.log = console.error;
console.info = console.error;
const { default: Provider } = await import('oidc-provider');

function fail(message) {
  console.error(`provider.mjs: ${message}`);
  process.exit(2);
}

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) fail(`${name} is not set (see the header of provider.mjs)`);
    return fallback;
  }
  return value;
}

// ---- accounts, from OIDC_USERS -------------------------------------------------------------
function parseUsers(spec) {
  const accounts = new Map();
  for (const entry of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const parts = entry.split(':');
    if (parts.length !== 4 || !parts[0] || !parts[1] || !parts[2]) {
      fail(`OIDC_USERS entry ${JSON.stringify(entry)} is not user:password:email:group1|group2`);
    }
    const [login, password, email, groups] = parts;
    accounts.set(login, {
      password,
      claims: {
        sub: login,
        email,
        // kube-apiserver 1.20 refuses a token whose email_verified is present and false.
        email_verified: true,
        groups: groups.split('|').filter(Boolean),
      },
    });
  }
  if (accounts.size === 0) fail('OIDC_USERS names no user');
  return accounts;
}

const ACCOUNTS = parseUsers(env('OIDC_USERS'));

// Compares SHA-256 digests in constant time, and does the same work for an unknown user.
function checkPassword(login, password) {
  const acct = ACCOUNTS.get(String(login ?? ''));
  const want = crypto.createHash('sha256').update(acct ? acct.password : 'x-no-such-user').digest();
  const got = crypto.createHash('sha256').update(String(password ?? '')).digest();
  return crypto.timingSafeEqual(want, got) && acct !== undefined;
}

async function findAccount(ctx, id) {
  const acct = ACCOUNTS.get(id);
  if (!acct) return undefined;
  return {
    accountId: id,
    async claims() { return { ...acct.claims, groups: [...acct.claims.groups] }; },
  };
}

// ---- signing key (RSA: kube-apiserver's default --oidc-signing-algs is RS256) and cookie keys,
// fresh for every run ---------------------------------------------------------------------------
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [{
    client_id: 'tether',
    client_name: 'tether',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  }],
  findAccount,
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // With the default (true), scope-requested claims (email, groups) go only to userinfo when an
  // access token is issued too; kube-apiserver reads them from the id_token.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  interactions: {
    url(ctx, interaction) { return `/interaction/${interaction.uid}`; },
  },
  ttl: {
    IdToken: 3600,
    AccessToken: 3600,
    DeviceCode: 600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
    Interaction: 3600,
  },
  // A refresh token for the public client when offline_access was granted.
  async issueRefreshToken(ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
};

// ---- interactions: login (password checked) and consent ------------------------------------
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`;
const loginForm = (uid) => `
<form id="login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <input type="text" name="login" placeholder="user name" required autofocus>
  <input type="password" name="password" placeholder="password" required>
  <button type="submit">Sign-in</button>
</form>`;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { data += c; if (data.length > 65536) reject(new Error('body too large')); });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(data))));
    req.on('error', reject);
  });
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interactionHandler(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'));
  const { prompt, params, session } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return send(res, 200, page('Sign-in', loginForm(uid)));
    if (prompt.name === 'consent') {
      return send(res, 200, page('Authorize', `
<p>${esc(params.client_id)} asks for: ${esc(params.scope)}</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
  <button type="submit">Continue</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`));
    }
    return send(res, 501, page('Error', `<p>prompt ${esc(prompt.name)} not implemented</p>`));
  }

  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    if (prompt.name !== 'login') return send(res, 400, page('Error', '<p>not a login prompt</p>'));
    if (!checkPassword(form.login, form.password)) {
      return send(res, 200, page('Sign-in', `<p class="error">wrong user name or password</p>${loginForm(uid)}`));
    }
    return provider.interactionFinished(req, res, { login: { accountId: form.login } }, { mergeWithLastSubmission: false });
  }

  if (req.method === 'POST' && action === 'confirm') {
    await readForm(req);
    if (prompt.name !== 'consent') return send(res, 400, page('Error', '<p>not a consent prompt</p>'));
    const { details: d } = prompt;
    let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
    if (!grant) grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  if (req.method === 'POST' && action === 'abort') {
    await readForm(req);
    return provider.interactionFinished(req, res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false });
  }

  return send(res, 405, page('Error', '<p>method not allowed</p>'));
}

// ---- server: listen first (the port may be the kernel's choice), then build the provider for
// that issuer, which must be known when the Provider is constructed ---------------------------
let tls;
try {
  tls = { cert: fs.readFileSync(env('OIDC_TLS_CERT')), key: fs.readFileSync(env('OIDC_TLS_KEY')) };
} catch (err) {
  fail(`cannot read the TLS certificate or key: ${err.message}`);
}
const port = Number(env('OIDC_PORT', '0'));
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`OIDC_PORT ${JSON.stringify(process.env.OIDC_PORT)} is not a port`);

const server = https.createServer(tls);
server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${port}: ${err.message}`));
server.listen(port, '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description ?? ''));
  const callback = provider.callback();

  server.on('request', (req, res) => {
    const t0 = Date.now();
    res.on('finish', () => console.error(`${new Date().toISOString()} ${req.method} ${req.url.split('?')[0]} ${res.statusCode} ${Date.now() - t0}ms`));
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?\/?(?:\?.*)?$/.exec(req.url);
    if (m) {
      interactionHandler(provider, req, res, m[1], m[2]).catch((err) => {
        console.error('interaction error', err);
        if (!res.headersSent) send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
      });
      return;
    }
    callback(req, res);
  });

  process.stdout.write(`oidc provider listening issuer=${issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
