//! The dashboard's HTTP server: axum on the daemon's runtime, every route
//! with data behind the access token ([`crate::ui::token`]).
//!
//! - `GET /`, `/style.css`, `/app.js`: the page and its assets, the same
//!   for everyone and holding no data; the page's script takes the token
//!   from the URL's fragment and asks for everything else with it.
//! - `GET /api/snapshot` the snapshot as JSON; `GET /api/events` a
//!   server-sent event with a fresh one every [`SAMPLE`].
//! - `POST /api/accept`, `/api/reject`, `/api/stop-share`, `/api/download`
//!   the actions, with a JSON body; a download goes only into an existing
//!   directory inside the user's home ([`crate::ui::download_dest`]).
//!
//! The token travels only in an `Authorization: Bearer` header: never in
//! a cookie, which a browser would send to every page on the same host
//! whatever its port, and never in a URL the server sees. A request
//! without it is refused 401, with a wrong one 403. Actions also refuse a
//! request another site made (by `Origin` and `Sec-Fetch-Site`).

use crate::tasks::Tasks;
use crate::ui::download_dest;
use crate::ui::meter::SAMPLE;
use crate::ui::snapshot::Source;
use crate::ui::token;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fileshare_protocol::messages::tracker::{AcceptRequest, RejectRequest};
use serde::Deserialize;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const INDEX: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// What every handler works with.
struct Ui {
    source: Arc<Source>,
    token: String,
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
    let api = Router::new()
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/accept", post(accept))
        .route("/api/reject", post(reject))
        .route("/api/stop-share", post(stop_share))
        .route("/api/download", post(download))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui);
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/style.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .merge(api)
        .layer(middleware::from_fn(protect))
}

/// The token a request carries: its `Authorization: Bearer` header.
fn token_of(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
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
    let Some(given) = token_of(&req) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this dashboard needs its access token: open the URL that `fsd ui` prints",
        );
    };
    if !token::matches(&ui.token, given) {
        return refuse(StatusCode::FORBIDDEN, "wrong access token");
    }
    if req.method() != Method::GET && !same_origin(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "refused a request from another site");
    }
    next.run(req).await
}

/// What every answer carries: no framing, no sniffing, no referrer, no
/// caching, and a policy that lets the page run only its own script.
async fn protect(req: Request, next: Next) -> Response {
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

async fn snapshot(State(ui): State<Arc<Ui>>) -> Json<crate::ui::snapshot::Snapshot> {
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
    let accept = AcceptRequest {
        session: t.session,
        group: d.group.clone(),
        user: d.user.clone(),
    };
    let r = t.client.call(accept).await;
    ui.source.invalidate().await;
    tracing::info!(group = %d.group, user = %d.user, ok = r.is_ok(), "request accepted on the dashboard");
    outcome(
        r.map(|_| format!("{} is now a member of {}", d.user, d.group))
            .map_err(|e| format!("{e:#}")),
    )
}

async fn reject(State(ui): State<Arc<Ui>>, Json(d): Json<Decision>) -> Response {
    let t = &ui.source.tracker;
    let reject = RejectRequest {
        session: t.session,
        group: d.group.clone(),
        user: d.user.clone(),
    };
    let r = t.client.call(reject).await;
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
    let dest =
        download_dest::user_home().and_then(|home| download_dest::check(Path::new(&d.dest), &home));
    let dest = match dest {
        Ok(d) => d,
        Err(e) => return outcome(Err(e.to_string())),
    };
    let r = ui
        .source
        .engine
        .start_download(&d.group, &d.name, &dest)
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
    fn origins() {
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
}
