//! The dashboard's HTTP server: axum on the daemon's runtime, every route
//! behind the access token ([`crate::ui::token`]).
//!
//! - `GET /` the page, with the current snapshot inside it, so it shows
//!   everything at once; `/style.css`, `/app.js` its assets.
//! - `GET /api/snapshot` the snapshot as JSON; `GET /api/events` a
//!   server-sent event with a fresh one every [`SAMPLE`].
//! - `POST /api/accept`, `/api/reject`, `/api/stop-share`, `/api/download`
//!   the actions, with a JSON body.
//!
//! A request without the token is refused 401, with a wrong one 403.
//! Actions take the token only from the cookie or a header, never from the
//! URL, and refuse a request another site made (by `Origin` and
//! `Sec-Fetch-Site`); the cookie's SameSite=Strict already keeps it off
//! such requests, and a JSON body cannot be sent across sites without the
//! server's consent.

use crate::tasks::Tasks;
use crate::ui::meter::SAMPLE;
use crate::ui::snapshot::{Snapshot, Source};
use crate::ui::token;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const INDEX: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// Where the page's snapshot goes in `index.html`.
const SNAPSHOT_MARK: &str = "{{SNAPSHOT}}";

/// What every handler works with.
struct Ui {
    source: Arc<Source>,
    token: String,
    /// The token's cookie on this port ([`token::cookie_name`]).
    cookie: String,
    /// Ends the event streams, so shutdown does not wait for open pages.
    stop: CancellationToken,
}

/// Serves the dashboard on `listener` under `tasks` until their token is
/// cancelled. Returns the address it serves, `http://ip:port/`.
pub fn start(
    listener: TcpListener,
    source: Arc<Source>,
    token: String,
    tasks: &Tasks,
) -> std::io::Result<String> {
    let local = listener.local_addr()?;
    let addr = format!("http://{local}/");
    let stop = tasks.token().clone();
    let ui = Arc::new(Ui {
        source,
        token,
        cookie: token::cookie_name(local.port()),
        stop: stop.clone(),
    });
    let app = router(ui);
    tasks.spawn("ui-server", async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!("the dashboard stopped: {e}");
        }
    });
    Ok(addr)
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/style.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/accept", post(accept))
        .route("/api/reject", post(reject))
        .route("/api/stop-share", post(stop_share))
        .route("/api/download", post(download))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

/// The token a request carries: an `Authorization: Bearer` header, or, for
/// reading only, `?token=` in the URL, or the cookie.
fn token_of(req: &Request, cookie: &str) -> Option<String> {
    let headers = req.headers();
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| token::cookie(h, cookie));
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = (req.method() == Method::GET)
        .then(|| query_token(req.uri().query()))
        .flatten();
    // A URL's token comes before an old cookie: it is what the user opened.
    from_header
        .map(str::to_string)
        .or(from_query)
        .or(from_cookie.map(str::to_string))
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_string())
    })
}

/// Whether a request comes from the dashboard's own pages (or from no page
/// at all, like `curl`): never from another site.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin == format!("http://{host}"),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

async fn guard(State(ui): State<Arc<Ui>>, req: Request, next: Next) -> Response {
    let Some(given) = token_of(&req, &ui.cookie) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this dashboard needs its access token: open the URL that `fsd ui` prints",
        );
    };
    if !token::matches(&ui.token, &given) {
        return refuse(StatusCode::FORBIDDEN, "wrong access token");
    }
    if req.method() != Method::GET && !same_origin(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "refused a request from another site");
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The page; opened with `?token=`, it sets the cookie and sends the
/// browser to the same page without the token in its address.
async fn index(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    if query_token(req.uri().query()).is_some() {
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (header::SET_COOKIE, token::set_cookie(&ui.cookie, &ui.token)),
            ],
        )
            .into_response();
    }
    let snap = ui.source.snapshot().await;
    let page = INDEX.replacen(SNAPSHOT_MARK, &embedded_json(&snap), 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// The snapshot as JSON safe inside a `<script>` element.
fn embedded_json(snap: &Snapshot) -> String {
    serde_json::to_string(snap)
        .unwrap_or_else(|_| "null".to_string())
        .replace('<', "\\u003c")
}

async fn snapshot(State(ui): State<Arc<Ui>>) -> Json<Snapshot> {
    Json(ui.source.snapshot().await)
}

async fn events(
    State(ui): State<Arc<Ui>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((ui, true), |(ui, first)| async move {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(SAMPLE) => {}
                () = ui.stop.cancelled() => return None,
            }
        }
        let snap = ui.source.snapshot().await;
        let event = Event::default()
            .event("snapshot")
            .json_data(&snap)
            .unwrap_or_else(|_| Event::default().comment("snapshot not encodable"));
        Some((Ok(event), (ui, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
struct Decision {
    group: String,
    user: String,
}

#[derive(Debug, Deserialize)]
struct FileRef {
    group: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct DownloadReq {
    group: String,
    name: String,
    dest: String,
}

/// What an action answers: `{"ok": "..."}` or `{"error": "..."}`.
fn outcome(r: Result<String, String>) -> Response {
    match r {
        Ok(msg) => Json(serde_json::json!({ "ok": msg })).into_response(),
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
    }
}

async fn accept(State(ui): State<Arc<Ui>>, Json(d): Json<Decision>) -> Response {
    let t = &ui.source.tracker;
    let r = t.client.accept_request(t.session, &d.group, &d.user).await;
    ui.source.invalidate().await;
    tracing::info!(group = %d.group, user = %d.user, ok = r.is_ok(), "request accepted on the dashboard");
    outcome(
        r.map(|_| format!("{} is now a member of {}", d.user, d.group))
            .map_err(|e| format!("{e:#}")),
    )
}

async fn reject(State(ui): State<Arc<Ui>>, Json(d): Json<Decision>) -> Response {
    let t = &ui.source.tracker;
    let r = t.client.reject_request(t.session, &d.group, &d.user).await;
    ui.source.invalidate().await;
    outcome(
        r.map(|_| format!("rejected {}'s request to join {}", d.user, d.group))
            .map_err(|e| format!("{e:#}")),
    )
}

async fn stop_share(State(ui): State<Arc<Ui>>, Json(f): Json<FileRef>) -> Response {
    let r = ui.source.engine.unshare(&f.group, &f.name).await;
    ui.source.invalidate().await;
    if r.is_ok() {
        tracing::info!(group = %f.group, file = %f.name, "stopped sharing from the dashboard");
    }
    outcome(
        r.map(|()| format!("stopped sharing {} in {}", f.name, f.group))
            .map_err(|e| format!("{e:#}")),
    )
}

async fn download(State(ui): State<Arc<Ui>>, Json(d): Json<DownloadReq>) -> Response {
    let dest = Path::new(&d.dest);
    if !dest.is_absolute() {
        return outcome(Err(format!("{} is not an absolute path", d.dest)));
    }
    let r = ui
        .source
        .engine
        .start_download(&d.group, &d.name, dest)
        .await;
    outcome(
        r.map(|s| format!("downloading {} to {}", s.name, s.dest.display()))
            .map_err(|e| e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_origins() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz".into()));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(None), None);
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no page at all: curl");
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.remove("origin");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn embedded_snapshot_cannot_close_its_script() {
        let snap = Snapshot {
            user: "</script><b>".into(),
            ..Snapshot::default()
        };
        let json = embedded_json(&snap);
        assert!(!json.contains('<'), "{json}");
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back.user, "</script><b>");
    }
}
