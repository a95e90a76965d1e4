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
import { createServer } from 'node:http';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';

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
};
const clients = Object.keys(GROUPS).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
}));
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
  if (url.pathname === '/test/forge') {
    forge(url.searchParams.get('kind')).then(
      (t) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(t); },
      (e) => { res.writeHead(500); res.end(String(e)); },
    );
    return;
  }
  handle(req, res);
}).listen(port, '127.0.0.1', () => console.log(`ready ${issuer} kid ${keys[0].kid}`));
