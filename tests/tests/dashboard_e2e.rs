//! The dashboard in a real browser: headless Chromium against real
//! daemons while a file is being read through the mount. The owner's page
//! shows the group, the file and its upload, the reader's page its
//! download; a request to join accepted on the page makes the user a
//! member; requests without the token, or from another site, are refused;
//! the token never travels in a cookie or a URL the server sees, and the
//! download action writes only into existing directories of the home.

use fileshare_tests::browser::{require_chromium, Browser};
use fileshare_tests::mount::wait_for;
use fileshare_tests::world::World;
use fileshare_tests::{random_file, HANG_LIMIT, MIB};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One raw HTTP/1.1 exchange with the dashboard: (status, whole response).
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the dashboard");
    s.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

/// `http://127.0.0.1:PORT/#token=T` into (`127.0.0.1:PORT`, `T`).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, token) = rest
        .split_once("/#token=")
        .expect("a token in the URL's fragment");
    (addr.to_string(), token.to_string())
}

/// Where the screenshots go: `docs/` when FILESHARE_UPDATE_SCREENSHOTS is
/// set, else the test's own directory.
fn screenshot_dir(w: &World) -> std::path::PathBuf {
    match std::env::var_os("FILESHARE_UPDATE_SCREENSHOTS") {
        Some(_) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"),
        None => w.path("shots"),
    }
}

fn refusals(addr: &str, token: &str) {
    let port = addr.rsplit(':').next().unwrap();
    let get = |path: &str, extra: &str| {
        http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
        )
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    // The page and its assets are the same for everyone and hold no data.
    for path in ["/", "/app.js", &format!("/?token={token}")] {
        let (status, resp) = get(path, "");
        assert_eq!(status, 200, "{path}: {resp}");
        assert!(
            !resp.contains("\"user\":") && !resp.contains("alice"),
            "{resp}"
        );
        assert!(!resp.to_ascii_lowercase().contains("set-cookie"), "{resp}");
    }
    for path in ["/api/snapshot", "/api/events"] {
        let (status, resp) = get(path, "");
        assert_eq!(status, 401, "{path} without the token: {resp}");
        assert!(!resp.contains("\"groups\""), "{resp}");
    }
    let (status, _) = get("/api/snapshot", &bearer("0000"));
    assert_eq!(status, 403, "a wrong token");
    // Neither a URL nor a cookie carries the token any more.
    let (status, _) = get(&format!("/api/snapshot?token={token}"), "");
    assert_eq!(status, 401, "a token in the URL");
    let (status, _) = get(
        "/api/snapshot",
        &format!("Cookie: fileshare_ui_{port}={token}\r\n"),
    );
    assert_eq!(status, 401, "a token in a cookie");
    let (status, resp) = get("/api/snapshot", &bearer(token));
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"groups\""), "{resp}");

    let post = |extra: &str| {
        let body = r#"{"group":"g","user":"nobody"}"#;
        http(
            addr,
            &format!(
                "POST /api/accept HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert_eq!(post("").0, 401, "an action without the token");
    let (status, _) = post(&format!("{}Origin: http://evil.example\r\n", bearer(token)));
    assert_eq!(status, 403, "an action from another site");
    let (status, _) = post(&format!("{}Sec-Fetch-Site: cross-site\r\n", bearer(token)));
    assert_eq!(status, 403, "an action from another site");
    let body = "{}";
    let (status, _) = http(
        addr,
        &format!(
            "POST /api/accept?token={token} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 401, "an action with the token in its URL");
}

#[test]
fn dashboard_in_a_real_browser_shows_the_swarm_and_accepts_a_request() {
    require_chromium();
    let (w, u) = World::network(&["alice", "bob"]);
    let (alice, bob) = (&u[0], &u[1]);
    let carol = w.user("carol");
    w.fsd_ok(&carol, &["join-group", "g"]);
    let ma = w.mount(alice, &[]);
    let src = w.path("big.bin");
    let len = 40 * MIB;
    random_file(&src, len, 16);
    w.fsd_ok(alice, &["upload-file", src.to_str().unwrap(), "g"]);
    // Bob reads slowly enough (40 s at the most) that the pages see the
    // transfer running; the reader stops when the test is done with it.
    let mb = w.mount(bob, &["--max-download-rate", "1M"]);
    let reading = mb.path("g/big.bin");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let stop = stop.clone();
        move || -> std::io::Result<usize> {
            let mut f = std::fs::File::open(&reading)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0;
            while !stop.load(Ordering::Relaxed) {
                match f.read(&mut buf)? {
                    0 => break,
                    n => total += n,
                }
            }
            Ok(total)
        }
    });

    let alice_url = w.fsd_ok(alice, &["ui"]).trim().to_string();
    let bob_url = w.fsd_ok(bob, &["ui"]).trim().to_string();
    let (alice_addr, alice_token) = split_url(&alice_url);
    assert!(alice_addr.starts_with("127.0.0.1:"), "{alice_url}");
    let mode = std::fs::metadata(alice.home.join("ui-token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    refusals(&alice_addr, &alice_token);

    let mut b = Browser::start();
    // The reader's page: the group, the file, a download above zero.
    b.goto(&bob_url);
    b.wait_for(
        "bob's page to show the file downloading",
        HANG_LIMIT,
        r#"document.querySelector('[data-group="g"] tr[data-file="big.bin"]')
           && Number(document.getElementById('total-down').dataset.bps) > 0
           && Number(document.querySelector('tr[data-file="big.bin"]').dataset.down) > 0"#,
    );
    assert_eq!(
        b.eval("location.hash + location.search"),
        serde_json::json!(""),
        "the token left the address bar"
    );
    assert_eq!(
        b.cookies(),
        serde_json::json!([]),
        "no cookie: another page on this host cannot get the token"
    );
    let shown = b.eval("document.body.innerText").to_string();
    assert!(
        shown.contains("big.bin") && shown.contains("40.0 MiB"),
        "{shown}"
    );
    // Whether files held whole are passed through, as `fsd status` says
    // it (the test runs as root, on a kernel with passthrough); bob's one
    // open of big.bin, not whole yet, went through the daemon.
    let status = w.fsd_ok(bob, &["status"]);
    let how = "read by the kernel directly (passthrough)";
    assert!(
        status.contains(&format!("files held whole: {how}")),
        "{status}"
    );
    assert!(
        shown.contains(&format!("Files held whole: {how}; 0 opens so far, 0 now."))
            && shown.contains("Through the daemon: 1 open, "),
        "{shown}"
    );
    let shots = screenshot_dir(&w);
    std::fs::create_dir_all(&shots).unwrap();
    if std::env::var_os("FILESHARE_UPDATE_SCREENSHOTS").is_some() {
        // For the README: half a minute of chart, a piece map half full.
        std::thread::sleep(Duration::from_secs(20));
    }
    b.screenshot(&shots.join("dashboard.png"), 1280, 1000);

    // The owner's page: the upload, and carol waiting to join.
    b.goto(&alice_url);
    b.wait_for(
        "alice's page to show the file uploading and carol's request",
        HANG_LIMIT,
        r#"document.querySelector('[data-group="g"] tr[data-file="big.bin"]')
           && Number(document.getElementById('total-up').dataset.bps) > 0
           && Number(document.querySelector('tr[data-file="big.bin"]').dataset.up) > 0
           && document.querySelector('[data-request="carol"] button[data-action="accept"]')"#,
    );
    let shown = b.eval("document.body.innerText").to_string();
    assert!(shown.contains("owner alice"), "{shown}");
    b.screenshot(&shots.join("dashboard-owner.png"), 1280, 900);
    assert_eq!(
        b.eval(r#"document.querySelector('[data-request="carol"] button[data-action="accept"]').click(); true"#),
        serde_json::json!(true)
    );
    b.wait_for(
        "the request to leave the page",
        HANG_LIMIT,
        r#"!document.querySelector('[data-request="carol"]')
           && document.querySelector('[data-group="g"]').innerText.includes('3 members')"#,
    );
    let groups = w.fsd_ok(&carol, &["list-groups"]);
    assert!(
        groups
            .lines()
            .any(|l| l == "g  owner=alice  members=3  [member]"),
        "{groups}"
    );
    // Carol, a member now, lists the file the page showed.
    wait_for("carol to list big.bin", HANG_LIMIT, || {
        w.fsd_ok(&carol, &["list-files", "g"])
            .contains("big.bin")
            .then_some(())
    });

    stop.store(true, Ordering::Relaxed);
    let read = reader.join().unwrap().expect("bob's read");
    assert!(read > 0 && read <= len, "{read}");

    // The other actions, as the page's own script sends them.
    let post = |b: &mut Browser, path: &str, body: serde_json::Value| {
        b.eval(&format!(
            "fetch('{path}', {{method: 'POST', headers: {{'Content-Type': 'application/json', \
             Authorization: 'Bearer ' + sessionStorage.getItem('fileshare-token')}}, \
             body: JSON.stringify({body})}}).then(r => r.json()).then(j => j.ok || ('error: ' + j.error))"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    };
    // Downloads go only into existing directories of the home of the
    // daemon's user (the test's: both run as root).
    let home = std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let outside = w.path("from-the-page.bin");
    let said = post(
        &mut b,
        "/api/download",
        serde_json::json!({"group": "g", "name": "big.bin", "dest": outside}),
    );
    assert!(
        said.starts_with("error: ") && said.contains("outside your home directory"),
        "{said}"
    );
    assert!(!outside.exists());
    let in_home = tempfile::Builder::new()
        .prefix("fileshare-dashboard-")
        .tempdir_in(&home)
        .expect("a directory in the home");
    let missing = in_home.path().join("no-such-dir/from-the-page.bin");
    let said = post(
        &mut b,
        "/api/download",
        serde_json::json!({"group": "g", "name": "big.bin", "dest": missing}),
    );
    assert!(
        said.starts_with("error: ") && said.contains("is not an existing directory"),
        "{said}"
    );
    let dest = in_home.path().join("from-the-page.bin");
    let said = post(
        &mut b,
        "/api/download",
        serde_json::json!({"group": "g", "name": "big.bin", "dest": dest}),
    );
    assert!(said.starts_with("downloading big.bin to"), "{said}");
    b.wait_for(
        "the download to show complete",
        HANG_LIMIT,
        "document.getElementById('downloads').innerText.includes('complete')",
    );
    fileshare_tests::cmp(&src, &dest);
    let said = post(
        &mut b,
        "/api/stop-share",
        serde_json::json!({"group": "g", "name": "big.bin"}),
    );
    assert_eq!(said, "stopped sharing big.bin in g");
    let status = w.fsd_ok(alice, &["status"]);
    assert!(status.contains("files      0 held here"), "{status}");
    let said = post(
        &mut b,
        "/api/reject",
        serde_json::json!({"group": "g", "user": "nobody"}),
    );
    assert!(said.starts_with("error: "), "{said}");
    drop(b);
    drop(mb);
    drop(ma);
}

#[test]
fn dashboard_can_be_turned_off_and_given_an_address() {
    let (w, u) = World::network(&["alice"]);
    let m = w.mount(&u[0], &["--ui", "off"]);
    let out = w.fsd(&u[0], &["ui"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ui off"), "{err}");
    drop(m);
    let port = fileshare_tests::reserve_port();
    let addr = format!("127.0.0.1:{}", port.get());
    let m = w.mount(&u[0], &["--ui", &addr]);
    let url = w.fsd_ok(&u[0], &["ui"]);
    assert!(url.starts_with(&format!("http://{addr}/#token=")), "{url}");

    // A page left open (its event stream) does not hold the daemon up.
    let (_, token) = split_url(url.trim());
    let mut events = TcpStream::connect(&addr).unwrap();
    events.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    write!(
        events,
        "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let n = events.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let out = w.fsd_ok(&u[0], &["logout"]);
    assert!(out.contains("stopped sharing and unmounted"), "{out}");
    // Held up, the daemon would exit only after its grace for tasks,
    // saying how many were still running; it ended the stream instead.
    let log = std::fs::read_to_string(u[0].home.join("mount.log")).unwrap_or_default();
    assert!(!log.contains("still running"), "{log}");
    let ended = loop {
        match events.read(&mut first) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        ended.is_ok(),
        "the page's event stream is still open: {ended:?}"
    );
    drop(m);
}
