//! The HTTP admin listener: health, and the approvals page where approvers log in (OIDC,
//! [`login`](super::login)) and answer held calls. Sessions live in memory (a restart asks
//! approvers to log in again); every state change is a POST carrying the session's CSRF token
//! from a page of this origin.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use crate::util::sync::LockExt;
use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use super::{
    login::{Login, Person},
    pages,
};
use crate::approve::{Approvals, Approver};

const NO_POLICY: &str = "this gateway runs without a policy: no call is ever held";

const SESSION_COOKIE: &str = "callgate_session";
const LOGIN_COOKIE: &str = "callgate_login";
/// Sessions kept at once; beyond it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;
/// Largest form accepted (a verdict with its comment).
const MAX_FORM: usize = 16 * 1024;
/// Live-refresh streams open at once.
const MAX_EVENT_STREAMS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

type Body_ = BoxBody<Bytes, Infallible>;

/// Why a request cannot go on; [`Web::reject`] words it for the browser.
enum Reject {
    NoLogin,
    /// Not logged in: to the log-in, then back to this path.
    ToLogin(String),
    Error(StatusCode, &'static str),
}

struct Session {
    person: Person,
    csrf: String,
    expires: Instant,
}

pub struct WebInputs {
    pub admin: Arc<super::AdminInputs>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    pub login: Option<Login>,
    /// Where browsers reach this listener, without a trailing slash.
    pub public_url: String,
}

struct Web {
    inputs: WebInputs,
    secure_cookies: bool,
    /// The `Origin` a form POST must come from.
    origin: String,
    sessions: Mutex<HashMap<String, Session>>,
    streams: Arc<()>,
}

pub async fn serve(listener: TcpListener, inputs: WebInputs, mut shutdown: watch::Receiver<bool>) {
    let origin = origin_of(&inputs.public_url);
    let web = Arc::new(Web {
        secure_cookies: inputs.public_url.starts_with("https://"),
        origin,
        inputs,
        sessions: Mutex::new(HashMap::new()),
        streams: Arc::new(()),
    });
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match conn {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "admin http accept failed");
                continue;
            }
        };
        let web = web.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(web.route(req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin http connection ended") },
                _ = stop.changed() => {}
            }
        });
    }
}

impl Web {
    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body_> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let resp = match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.ready(),
            (&Method::GET, "/metrics") => {
                let text = super::metrics::render(&self.inputs.metrics, &self.inputs.admin);
                let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "/") => redirect("/approvals"),
            (&Method::GET, "/static/live.js") => {
                let mut r = plain(StatusCode::OK, pages::LIVE_JS);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/javascript; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/login") => self.login(&req).await,
            (&Method::GET, "/callback") => self.callback(&req).await,
            (&Method::POST, "/logout") => self.logout(req).await,
            (&Method::GET, "/approvals") => match self.session(&req) {
                Ok((me, csrf)) => {
                    let list = match self.approvals() {
                        Ok(a) => a.list_fleet(true).await,
                        Err(r) => return self.reject(r),
                    };
                    let body = pages::list(&approver(&me), &list);
                    html(
                        StatusCode::OK,
                        &pages::page("approvals", Some((&me, &csrf)), true, &body),
                    )
                }
                Err(r) => self.reject(r),
            },
            (&Method::GET, "/approvals/events") => match self.session(&req) {
                Ok(_) => self.events(),
                Err(r) => self.reject(r),
            },
            (m, p) if p.starts_with("/approvals/") => {
                let id = p.trim_start_matches("/approvals/").to_string();
                match *m {
                    Method::GET => self.detail(&req, &id).await,
                    Method::POST => self.answer(req, &id).await,
                    _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
                }
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        };
        debug!(%peer, %method, path, status = %resp.status(), "admin http");
        resp
    }

    fn approvals(&self) -> Result<&Arc<Approvals>, Reject> {
        self.inputs
            .admin
            .approvals
            .as_ref()
            .ok_or(Reject::Error(StatusCode::NOT_FOUND, NO_POLICY))
    }

    /// Ready to serve calls: the policy loaded (when there is one) and the call log writable.
    /// (Interception itself is in place before this listener opens.)
    fn ready(&self) -> Response<Body_> {
        let a = &self.inputs.admin;
        if let Some(why) = a.recorder.as_ref().and_then(|r| r.status().failing) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the call log fails: {why}\n"),
            );
        }
        if let Some(p) = &a.policy {
            if let Some(errors) = p.status().last_error {
                // The previous policy still decides: ready, but say so.
                return text(
                    StatusCode::OK,
                    format!(
                        "ready (the last policy reload failed: {})\n",
                        errors.join("; ")
                    ),
                );
            }
        }
        plain(StatusCode::OK, "ready\n")
    }

    /// The logged-in person and their CSRF token.
    fn session(&self, req: &Request<Incoming>) -> Result<(Person, String), Reject> {
        if self.inputs.login.is_none() {
            return Err(Reject::NoLogin);
        }
        let id = cookie(req, SESSION_COOKIE);
        let mut sessions = self.sessions.locked();
        if let Some(s) = id.as_deref().and_then(|id| sessions.get(id)) {
            if s.expires > Instant::now() {
                return Ok((s.person.clone(), s.csrf.clone()));
            }
        }
        if let Some(id) = id {
            sessions.remove(&id);
        }
        let next = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| req.method() == Method::GET && !p.starts_with("/approvals/events"))
            .unwrap_or("/approvals");
        Err(Reject::ToLogin(next.to_string()))
    }

    fn reject(&self, r: Reject) -> Response<Body_> {
        match r {
            Reject::NoLogin => self.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Approver log-in is not configured on this gateway (admin_http.login in its config). Use `callgate approvals` on the host.",
            ),
            Reject::ToLogin(next) => redirect(&format!(
                "/login?next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            )),
            Reject::Error(status, msg) => self.error(status, msg),
        }
    }

    async fn login(&self, req: &Request<Incoming>) -> Response<Body_> {
        let Some(login) = &self.inputs.login else {
            return plain(StatusCode::NOT_FOUND, "log-in is not configured\n");
        };
        let next = match query(req, "next") {
            None => "/approvals".to_string(),
            // Anything that is not plainly a path on this site goes to the start page.
            Some(n) => local_path(&n).unwrap_or_else(|| "/".into()),
        };
        match login.begin(&next).await {
            Ok((url, state)) => {
                let mut r = redirect(&url);
                let c = Cookie::build((LOGIN_COOKIE, state))
                    .path("/callback")
                    .http_only(true)
                    .secure(self.secure_cookies)
                    // The provider's redirect back is a top-level navigation: Lax sends it.
                    .same_site(SameSite::Lax)
                    .max_age(cookie::time::Duration::minutes(10));
                set_cookie(&mut r, c.build());
                r
            }
            Err(e) => {
                warn!(issuer = login.issuer(), error = %e, "approver log-in could not start");
                self.error(StatusCode::BAD_GATEWAY, &e.to_string())
            }
        }
    }

    async fn callback(&self, req: &Request<Incoming>) -> Response<Body_> {
        let Some(login) = &self.inputs.login else {
            return plain(StatusCode::NOT_FOUND, "log-in is not configured\n");
        };
        if let Some(e) = query(req, "error") {
            let why = query(req, "error_description").unwrap_or_default();
            return self.error(
                StatusCode::FORBIDDEN,
                &format!("the login provider refused: {e} {why}"),
            );
        }
        let (Some(code), Some(state)) = (query(req, "code"), query(req, "state")) else {
            return self.error(StatusCode::BAD_REQUEST, "the login provider sent no code");
        };
        let from_cookie = cookie(req, LOGIN_COOKIE);
        match login.finish(&code, &state, from_cookie.as_deref()).await {
            Ok((person, next)) => {
                info!(subject = %person.subject, groups = ?person.groups, "approver logged in");
                let id = random_token();
                let csrf = random_token();
                {
                    let mut sessions = self.sessions.locked();
                    let now = Instant::now();
                    sessions.retain(|_, s| s.expires > now);
                    if sessions.len() >= MAX_SESSIONS {
                        let oldest = sessions
                            .iter()
                            .min_by_key(|(_, s)| s.expires)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            sessions.remove(&k);
                        }
                    }
                    sessions.insert(
                        id.clone(),
                        Session {
                            person,
                            csrf,
                            expires: now + login.session_length(),
                        },
                    );
                }
                let mut r = redirect(&next);
                let session = Cookie::build((SESSION_COOKIE, id))
                    .path("/")
                    .http_only(true)
                    .secure(self.secure_cookies)
                    .same_site(SameSite::Lax)
                    .max_age(cookie::time::Duration::seconds(
                        login.session_length().as_secs() as i64,
                    ));
                set_cookie(&mut r, session.build());
                set_cookie(&mut r, removal(LOGIN_COOKIE, "/callback"));
                r
            }
            Err(e) => {
                warn!(error = %e, "approver log-in failed");
                self.error(StatusCode::FORBIDDEN, &e.to_string())
            }
        }
    }

    /// Ends the session: only with the session's CSRF token, from a page of this origin, as
    /// every other POST (another site must not be able to log an approver out). Without a live
    /// session there is nothing to protect: the browser's cookie is dropped.
    async fn logout(&self, req: Request<Incoming>) -> Response<Body_> {
        let id = cookie(&req, SESSION_COOKIE);
        let foreign = req
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() != self.origin.as_bytes());
        let form = match form(req).await {
            Ok(f) => f,
            Err(r) => return self.reject(r),
        };
        if let Some(id) = id {
            let mut sessions = self.sessions.locked();
            if let Some(s) = sessions.get(&id).filter(|s| s.expires > Instant::now()) {
                if foreign || !same(&s.csrf, form_value(&form, "csrf")) {
                    drop(sessions);
                    return self.error(
                        StatusCode::FORBIDDEN,
                        "the form's security token is missing or stale; reload the page and try again",
                    );
                }
            }
            sessions.remove(&id);
        }
        let mut r = html(
            StatusCode::OK,
            &pages::page(
                "logged out",
                None,
                false,
                &pages::message("note", "Logged out."),
            ),
        );
        set_cookie(&mut r, removal(SESSION_COOKIE, "/"));
        r
    }

    async fn detail(&self, req: &Request<Incoming>, id: &str) -> Response<Body_> {
        let (me, csrf) = match self.session(req) {
            Ok(s) => s,
            Err(r) => return self.reject(r),
        };
        let who = approver(&me);
        let approvals = match self.approvals() {
            Ok(a) => a,
            Err(r) => return self.reject(r),
        };
        match approvals.get_fleet(id).await {
            Some(r) if r.names(&who) => {
                let flash = query(req, "done").map(|d| match d.as_str() {
                    "approved" => "Approved: the call went ahead.".to_string(),
                    "denied" => "Denied: the caller was told.".to_string(),
                    other => other.to_string(),
                });
                let body = pages::detail(&who, &r, &csrf, flash.as_deref());
                html(
                    StatusCode::OK,
                    &pages::page("approval", Some((&me, &csrf)), false, &body),
                )
            }
            // Requests of rules that do not name this person are not theirs to see.
            _ => self.error(StatusCode::NOT_FOUND, "no such approval request for you"),
        }
    }

    async fn answer(&self, req: Request<Incoming>, id: &str) -> Response<Body_> {
        let (me, csrf) = match self.session(&req) {
            Ok(s) => s,
            Err(r) => return self.reject(r),
        };
        // A form from another site never carries our token; the Origin check also stops a
        // page of another origin that somehow got hold of one.
        if let Some(o) = req.headers().get(header::ORIGIN) {
            if o.as_bytes() != self.origin.as_bytes() {
                return self.error(StatusCode::FORBIDDEN, "this form came from another site");
            }
        }
        let form = match form(req).await {
            Ok(f) => f,
            Err(r) => return self.reject(r),
        };
        if !same(&csrf, form_value(&form, "csrf")) {
            return self.error(
                StatusCode::FORBIDDEN,
                "the form's security token is missing or stale; reload the page and try again",
            );
        }
        let approve = match form_value(&form, "verdict") {
            Some("approve") => true,
            Some("deny") => false,
            _ => return self.error(StatusCode::BAD_REQUEST, "approve or deny?"),
        };
        let grant = match form_value(&form, "grant").filter(|g| !g.is_empty()) {
            None => None,
            Some(g) => match crate::util::time::parse_duration(g) {
                Some(d) if approve => Some(d),
                Some(_) => None,
                None => return self.error(StatusCode::BAD_REQUEST, "not a grant window"),
            },
        };
        let comment = form_value(&form, "comment")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.chars().take(2000).collect::<String>());
        let who = approver(&me);
        let approvals = match self.approvals() {
            Ok(a) => a,
            Err(r) => return self.reject(r),
        };
        match approvals.answer(id, approve, &who, grant, comment).await {
            Ok(_) => redirect(&format!(
                "/approvals/{}?done={}",
                id,
                if approve { "approved" } else { "denied" }
            )),
            Err(why) => match approvals.get_fleet(id).await {
                Some(r) if r.names(&who) => {
                    let body = pages::detail(&who, &r, &csrf, Some(&why));
                    html(
                        StatusCode::CONFLICT,
                        &pages::page("approval", Some((&me, &csrf)), false, &body),
                    )
                }
                _ => self.error(StatusCode::NOT_FOUND, "no such approval request for you"),
            },
        }
    }

    /// Server-sent events: the change counter now and after every change, so that the
    /// list page reloads itself.
    fn events(&self) -> Response<Body_> {
        if Arc::strong_count(&self.streams) > MAX_EVENT_STREAMS {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "too many live pages\n");
        }
        let guard = self.streams.clone();
        let mut changes = match self.approvals() {
            Ok(a) => a.changes(),
            Err(r) => return self.reject(r),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                let n = *changes.borrow_and_update();
                if tx
                    .send(Bytes::from(format!("data: {n}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                // A comment line now and then finds out whether the browser is still there.
                loop {
                    tokio::select! {
                        c = changes.changed() => match c {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        _ = tokio::time::sleep(Duration::from_secs(20)) => {
                            if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(Events(rx).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    fn error(&self, status: StatusCode, msg: &str) -> Response<Body_> {
        html(
            status,
            &pages::page("error", None, false, &pages::message("error", msg)),
        )
    }
}

async fn form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Reject> {
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| Reject::Error(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

/// The approver a logged-in person is: named by subject, with their groups.
fn approver(p: &Person) -> Approver {
    Approver {
        name: p.subject.clone(),
        groups: p.groups.clone(),
        operator: false,
    }
}

struct Events(mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn html(status: StatusCode, body: &str) -> Response<Body_> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `no-referrer` would make browsers send `Origin: null` with our own forms.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body_> {
    text(status, body)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body_> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Response<Body_> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn set_cookie(r: &mut Response<Body_>, c: Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn removal(name: &'static str, path: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build((name, "")).path(path).build();
    c.make_removal();
    c
}

fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn form_value<'f>(form: &'f [(String, String)], key: &str) -> Option<&'f str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `p` as a path on this site, or `None`: no open redirect after login.
///
/// Browsers read a `Location` more loosely than a URL parser does: they drop ASCII tab and
/// newline anywhere, and treat `\` as `/`, so `/\t/evil.example` and `/\\evil.example` are both
/// `//evil.example`, another site. The check is made on what a browser would see, after
/// dropping those characters, and again after one more percent-decoding (so an encoded
/// spelling is not waved through to a hop that decodes). Only printable ASCII is kept, so the
/// value is a valid header as it stands and nothing in it is invisible.
fn local_path(p: &str) -> Option<String> {
    fn strip(b: &[u8]) -> Vec<u8> {
        b.iter()
            .copied()
            .filter(|c| !matches!(c, b'\t' | b'\n' | b'\r'))
            .collect()
    }
    fn plain_path(b: &[u8]) -> bool {
        b.first() == Some(&b'/')
            && !matches!(b.get(1), Some(b'/' | b'\\'))
            // Printable ASCII only: no controls, DEL, spaces or non-ASCII look-alikes.
            && b.iter().all(|c| (0x21..0x7f).contains(c))
            && !b.contains(&b'\\')
    }
    let seen = strip(p.as_bytes());
    let decoded = strip(&percent_encoding::percent_decode(&seen).collect::<Vec<u8>>());
    if plain_path(&seen) && plain_path(&decoded) {
        String::from_utf8(seen).ok()
    } else {
        None
    }
}

/// Constant-time comparison of a token with what a form sent.
fn same(want: &str, got: Option<&str>) -> bool {
    let Some(got) = got else { return false };
    want.len() == got.len()
        && want
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // The OS generator failing is not something to carry on from.
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `scheme://host[:port]` of a URL, as browsers send it in `Origin`.
fn origin_of(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}",
            u.scheme_str().unwrap_or("http"),
            u.authority().map(|a| a.as_str()).unwrap_or("")
        ),
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(same("abc", Some("abc")));
        assert!(!same("abc", Some("abd")));
        assert!(!same("abc", Some("ab")));
        assert!(!same("abc", None));
        assert_eq!(
            origin_of("https://gw.example:8443/x"),
            "https://gw.example:8443"
        );
        assert_eq!(origin_of("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[test]
    fn login_goes_back_only_to_a_path_on_this_site() {
        for ok in [
            "/approvals",
            "/approvals/x?y=1",
            "/approvals/0190?done=approved&a=%41",
            "/",
        ] {
            assert_eq!(local_path(ok).as_deref(), Some(ok), "{ok:?}");
        }
        // Browsers drop tab and newlines: the value is kept as a browser would see it.
        assert_eq!(local_path("/appro\tvals").as_deref(), Some("/approvals"));
        // `next` as the query gave it, i.e. after the one decoding of the query string.
        for hostile in [
            "",
            "approvals",
            "//evil.example/",
            "///evil.example/",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r/evil.example/",
            "\t//evil.example/",
            "/\r\n/evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "/x\\y",
            "https://evil.example/",
            "http:evil.example",
            "javascript:alert(1)",
            " /evil",
            "/ evil",
            "/\u{0}x",
            "/\u{1b}[2J",
            "/\u{7f}",
            "/\u{85}x",
            "/\u{202e}x",
            "/\u{3000}/evil.example",
            // Encoded once more: what a second decoding hop would see.
            "/%2F/evil.example",
            "/%2f/evil.example",
            "/%5Cevil.example",
            "/%5c/evil.example",
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%0D/evil.example",
            "/%00",
            "/%1b[2J",
        ] {
            assert_eq!(local_path(hostile), None, "{hostile:?} is let through");
        }
    }
}
