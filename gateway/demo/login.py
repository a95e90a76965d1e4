"""The demo's own login provider: a minimal OpenID provider on loopback so that the approvals
page works without setup. One person, `approver` (group `finance-leads`), whose password
`callgate demo` generates for each run and prints; one client, the demo gateway's.

Authorization code flow with PKCE (S256) only; ID tokens signed RS256 with a key made at
start. Standard library plus `cryptography` (which the MCP SDK already brings).

usage: login.py HOST PORT CONFIG_JSON
  CONFIG_JSON: {"password", "client_id", "client_secret", "redirect_uri"}
"""

import base64
import hashlib
import hmac
import html
import json
import secrets
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HOST, PORT, CONFIG = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(CONFIG) as f:
    CFG = json.load(f)
ISSUER = f"http://{HOST}:{PORT}"
USER = "approver"
GROUPS = ["finance-leads"]
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = secrets.token_hex(8)
CODE_TTL = 120
MAX_FAILURES = 20

codes = {}
failures = 0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def sign(claims: dict) -> str:
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(json.dumps(claims).encode())
    sig = KEY.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


def same(a, b) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())


PAGE = """<!doctype html><html><head><meta charset=utf-8><title>callgate demo login</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:3em auto}}
input{{display:block;margin:.3em 0 1em;padding:.3em;width:100%}}.err{{color:#b00}}</style>
</head><body><h1>callgate demo: log in</h1>
<p>The demo's own login provider. The password was printed by <code>callgate demo</code>.</p>
{error}<form method=post action="/authorize">{hidden}
<label>User<input name=username value="approver" autocomplete=username></label>
<label>Password<input name=password type=password autofocus autocomplete=current-password></label>
<button>Log in</button></form></body></html>"""

AUTH_PARAMS = ["client_id", "redirect_uri", "state", "nonce", "code_challenge", "scope"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("login: " + (fmt % args) + "\n")

    def send(self, status, body, ctype="application/json", headers=()):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def form(self):
        n = min(int(self.headers.get("Content-Length") or 0), 65536)
        raw = self.rfile.read(n).decode(errors="replace")
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self.send(200, json.dumps({
                "issuer": ISSUER,
                "authorization_endpoint": f"{ISSUER}/authorize",
                "token_endpoint": f"{ISSUER}/token",
                "jwks_uri": f"{ISSUER}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "groups"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": ["sub", "preferred_username", "groups"],
            }))
        elif url.path == "/jwks":
            pub = KEY.public_key().public_numbers()
            self.send(200, json.dumps({"keys": [{
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
                "n": uint(pub.n), "e": uint(pub.e),
            }]}))
        elif url.path == "/authorize":
            self.authorize_page(q, "")
        else:
            self.send(404, "not found\n", "text/plain")

    def authorize_page(self, q, error):
        if q.get("client_id") != CFG["client_id"] or q.get("redirect_uri") != CFG["redirect_uri"]:
            self.send(400, "unknown client or redirect_uri\n", "text/plain")
            return
        if q.get("code_challenge_method", "S256") != "S256" or not q.get("code_challenge"):
            self.send(400, "PKCE (S256) is required\n", "text/plain")
            return
        hidden = "".join(
            f'<input type=hidden name="{k}" value="{html.escape(q.get(k, ""))}">' for k in AUTH_PARAMS
        )
        err = f"<p class=err>{html.escape(error)}</p>" if error else ""
        self.send(200 if not error else 401, PAGE.format(error=err, hidden=hidden), "text/html; charset=utf-8")

    def do_POST(self):
        global failures
        path = urllib.parse.urlsplit(self.path).path
        f = self.form()
        if path == "/authorize":
            if f.get("client_id") != CFG["client_id"] or f.get("redirect_uri") != CFG["redirect_uri"]:
                self.send(400, "unknown client or redirect_uri\n", "text/plain")
                return
            if failures >= MAX_FAILURES:
                self.send(429, "too many wrong passwords; restart the demo\n", "text/plain")
                return
            if f.get("username") != USER or not same(f.get("password"), CFG["password"]):
                failures += 1
                self.authorize_page(f, "wrong user or password")
                return
            code = secrets.token_urlsafe(24)
            codes[code] = {
                "nonce": f.get("nonce"),
                "challenge": f.get("code_challenge"),
                "expires": time.time() + CODE_TTL,
            }
            back = CFG["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": f.get("state", "")})
            self.send(303, "", "text/plain", [("Location", back)])
        elif path == "/token":
            self.token(f)
        else:
            self.send(404, "not found\n", "text/plain")

    def token(self, f):
        cid, secret = f.get("client_id"), f.get("client_secret")
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                pair = base64.b64decode(auth[6:]).decode()
                cid, secret = (urllib.parse.unquote_plus(p) for p in pair.split(":", 1))
            except Exception:
                cid = None
        if cid != CFG["client_id"] or not same(secret, CFG["client_secret"]):
            self.send(401, json.dumps({"error": "invalid_client"}))
            return
        c = codes.pop(f.get("code", ""), None)
        verifier = f.get("code_verifier", "")
        if (
            f.get("grant_type") != "authorization_code"
            or c is None
            or c["expires"] < time.time()
            or f.get("redirect_uri") != CFG["redirect_uri"]
            or b64(hashlib.sha256(verifier.encode()).digest()) != c["challenge"]
        ):
            self.send(400, json.dumps({"error": "invalid_grant"}))
            return
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": USER, "aud": CFG["client_id"], "iat": now, "exp": now + 600,
            "preferred_username": USER, "groups": GROUPS,
        }
        if c["nonce"]:
            claims["nonce"] = c["nonce"]
        self.send(200, json.dumps({
            "access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
            "expires_in": 600, "id_token": sign(claims),
        }))


ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
