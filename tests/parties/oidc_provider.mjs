// A real OpenID provider for the end-to-end tests: npm `oidc-provider` (an OpenID-certified
// implementation) on loopback. Clients get JWT access tokens with a `groups` claim through
// client credentials, as a service account would. People (approvers) log in to the client
// `callgate-approvals` through the provider's own login and consent pages (authorization
// code + PKCE); any password is accepted, their groups come from PEOPLE.
//
//   node oidc_provider.mjs --port P --keys FILE [--rotate] [--redirect-uri URL]...
//
// FILE keeps the signing keys across restarts; --rotate adds a new key (new kid) in front,
// which then signs, and keeps publishing the old one. `/test/forge?kind=otherkey|none` mints
// tokens a provider never would (signed by an unpublished key under a published kid, or not
// signed at all), for the verifier's negative cases.
//
// Token exchange (RFC 8693): client `callgate-gateway` (secret `callgate-gateway-secret`) may
// exchange a caller's access token (the subject token, which must be one this provider
// issued for `payments`) for one meant for the requested `audience`, carrying the caller's
// `sub` and the gateway as the actor (`act`). The subject `intern` is refused. The exchanges
// made are counted at `/test/exchanges`.
import { createServer } from 'node:http';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';
import { SignJWT, createLocalJWKSet, exportJWK, generateKeyPair, importJWK, jwtVerify } from 'jose';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    keys: { type: 'string' },
    rotate: { type: 'boolean', default: false },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
  },
});
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = existsSync(args.keys) ? JSON.parse(readFileSync(args.keys, 'utf8')) : [];
if (keys.length === 0 || args.rotate) keys = [await newKey(), ...keys];
writeFileSync(args.keys, JSON.stringify(keys));

// Which groups each service account is in.
const GROUPS = {
  'billing-agent': ['finance'],
  'support-bot': ['support'],
  'short-lived': ['finance'],
  intern: [],
};
const clients = Object.keys(GROUPS).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
}));
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
clients.push({
  client_id: 'callgate-gateway',
  client_secret: 'callgate-gateway-secret',
  grant_types: [TOKEN_EXCHANGE],
  redirect_uris: [],
  response_types: [],
});
// People who log in interactively, and their groups.
const PEOPLE = { alice: ['finance-leads'], bob: ['support'] };
if (args['redirect-uri'].length > 0) {
  clients.push({
    client_id: 'callgate-approvals',
    client_secret: 'callgate-approvals-secret',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: args['redirect-uri'],
  });
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, preferred_username: id, groups: PEOPLE[id] ?? [] }),
  }),
  claims: { openid: ['sub'], profile: ['preferred_username'], groups: ['groups'] },
  // Scope-granted claims go in the ID token too, as most enterprise providers do for groups.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:callgate:payments',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'api',
        audience: resource === 'urn:callgate:other' ? 'other-api' : 'payments',
        accessTokenTTL: client.clientId === 'short-lived' ? 2 : 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256', kid: keys[0].kid } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({ groups: GROUPS[token.clientId] ?? [] }),
});

// RFC 8693 §2: the subject token is verified as this provider's own access token; the issued
// token is a JWT for the requested audience with the subject's `sub`.
const publicKeys = createLocalJWKSet({
  keys: keys.map(({ kty, n, e, kid, alg }) => ({ kty, n, e, kid, alg, use: 'sig' })),
});
const signingKey = await importJWK(keys[0], 'RS256');
let exchanges = 0;
const ACCESS_TOKEN_TYPES = new Set([
  'urn:ietf:params:oauth:token-type:access_token',
  'urn:ietf:params:oauth:token-type:jwt',
]);
// An error answer with its description (the library's own errors keep theirs generic).
function refuse(ctx, error, description) {
  ctx.status = 400;
  ctx.body = { error, error_description: description };
}
provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const p = ctx.oidc.params;
    if (!ACCESS_TOKEN_TYPES.has(p.subject_token_type)) {
      refuse(ctx, 'invalid_request', `unsupported subject_token_type ${p.subject_token_type}`);
      return;
    }
    const audience = p.audience || p.resource;
    if (!audience) {
      refuse(ctx, 'invalid_target', 'name an audience or resource');
      return;
    }
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(p.subject_token, publicKeys, {
        issuer, audience: 'payments',
      }));
    } catch (e) {
      refuse(ctx, 'invalid_grant', `subject_token is not valid: ${e.message}`);
      return;
    }
    if (subject.sub === 'intern') {
      refuse(ctx, 'invalid_grant', `subject ${subject.sub} may not act at ${audience}`);
      return;
    }
    exchanges += 1;
    const now = Math.floor(Date.now() / 1000);
    const ttl = 600;
    const token = await new SignJWT({
      sub: subject.sub, client_id: ctx.oidc.client.clientId, scope: p.scope || undefined,
      act: { sub: ctx.oidc.client.clientId }, jti: randomUUID(),
    })
      .setProtectedHeader({ alg: 'RS256', kid: keys[0].kid, typ: 'at+jwt' })
      .setIssuer(issuer).setAudience(audience).setIssuedAt(now).setExpirationTime(now + ttl)
      .sign(signingKey);
    ctx.body = {
      access_token: token,
      issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      token_type: 'Bearer',
      expires_in: ttl,
      scope: p.scope || undefined,
    };
  },
  ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'audience', 'resource',
    'scope', 'requested_token_type'],
);

const handle = provider.callback();

async function forge(kind) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: issuer, sub: 'billing-agent', client_id: 'billing-agent', aud: 'payments',
    groups: ['finance'], iat: now, exp: now + 600, jti: randomUUID(),
  };
  if (kind === 'none') {
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
    return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
  }
  const { privateKey } = await generateKeyPair('RS256');
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: keys[0].kid, typ: 'at+jwt' })
    .sign(privateKey);
}

createServer((req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/exchanges') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(String(exchanges));
    return;
  }
  if (url.pathname === '/test/forge') {
    forge(url.searchParams.get('kind')).then(
      (t) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(t); },
      (e) => { res.writeHead(500); res.end(String(e)); },
    );
    return;
  }
  handle(req, res);
}).listen(port, '127.0.0.1', () => console.log(`ready ${issuer} kid ${keys[0].kid}`));
