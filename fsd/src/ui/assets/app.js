// The FileShare dashboard: renders the daemon's snapshot, then follows it
// through server-sent events. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;

// The access token comes in the URL's fragment, which the browser never
// sends to a server. It is kept in this tab's session storage (kept apart
// per origin, port included, unlike cookies), taken out of the address
// bar, and sent as a header with every request.
const TOKEN_KEY = "fileshare-token";
(function takeToken() {
  const m = /(?:^#|&)token=([0-9a-fA-F]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
const TOKEN = sessionStorage.getItem(TOKEN_KEY) || "";

function authed(init) {
  const i = Object.assign({}, init || {});
  i.headers = Object.assign({}, i.headers || {}, { Authorization: "Bearer " + TOKEN });
  return i;
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function bytes(n) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (n < 1024) return n + " B";
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return v.toFixed(1) + " " + units[i];
}
const rate = (n) => bytes(n) + "/s";

// Piece map: one cell per character (see snapshot.rs), drawn as BitTorrent
// clients draw it: a bar, green where verified, amber in flight, grey missing.
function drawMap(canvas, map) {
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 14;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.fillStyle = "#e6eaef";
  ctx.fillRect(0, 0, w, h);
  const n = map.length;
  if (!n) return;
  const cw = w / n;
  for (let i = 0; i < n; i++) {
    const c = map[i];
    if (c === "0") continue;
    if (c === "v") ctx.fillStyle = "#2da44e";
    else if (c === "f") ctx.fillStyle = "#d4a72c";
    else ctx.fillStyle = "rgba(45,164,78," + (0.2 + 0.08 * Number(c)) + ")";
    // Cells overlap by a hair so no seams show between neighbours.
    ctx.fillRect(i * cw, 0, cw + 0.6, h);
  }
}

function drawChart(history) {
  const svg = $("chart");
  // The window grows with the history, from one minute to five.
  const W = 600, H = 120, span = Math.min(300, Math.max(60, history.length));
  const max = Math.max(1024, ...history.map((s) => Math.max(s.down, s.up)));
  const x = (i) => W - (history.length - 1 - i) * (W / (span - 1));
  const y = (v) => H - 4 - (v / max) * (H - 12);
  const path = (key) => history.map((s, i) => (i ? "L" : "M") + x(i).toFixed(1) + "," + y(s[key]).toFixed(1)).join("");
  const area = (key) => history.length ? path(key) + "L" + x(history.length - 1).toFixed(1) + "," + H + "L" + x(0).toFixed(1) + "," + H + "Z" : "";
  let grid = "";
  for (let i = 1; i < 4; i++) grid += '<line class="grid" x1="0" x2="' + W + '" y1="' + (i * H / 4) + '" y2="' + (i * H / 4) + '"/>';
  svg.innerHTML = grid +
    '<path class="area down" d="' + area("down") + '"/><path class="area up" d="' + area("up") + '"/>' +
    '<path class="line down" d="' + path("down") + '"/><path class="line up" d="' + path("up") + '"/>';
  const peak = Math.max(0, ...history.map((s) => Math.max(s.down, s.up)));
  $("chart-scale").textContent = peak ? "peak " + rate(peak) : "idle";
  const secs = history.length;
  $("chart-span").textContent = secs >= 60 ? "last " + Math.round(secs / 60) + " min" : "last " + secs + " s";
}

function groupCard(g) {
  const role = g.is_owner ? '<span class="badge owner">owner</span>' : g.pending ? '<span class="badge pending">request pending</span>' : '<span class="badge">member</span>';
  let html = '<section class="card group" data-group="' + esc(g.name) + '">' +
    '<div class="card-head"><h3>' + esc(g.name) + "</h3>" + role +
    '<span class="muted">owner ' + esc(g.owner) + " &middot; " + g.members + (g.members === 1 ? " member" : " members") + "</span></div>";
  if (g.requests.length) {
    html += '<div class="requests"><div class="muted">Waiting to join</div>';
    for (const u of g.requests) {
      html += '<div class="request" data-request="' + esc(u) + '"><span class="user">' + esc(u) + "</span>" +
        '<button class="primary" data-action="accept" data-group="' + esc(g.name) + '" data-user="' + esc(u) + '">Accept</button>' +
        '<button data-action="reject" data-group="' + esc(g.name) + '" data-user="' + esc(u) + '">Reject</button></div>';
    }
    html += "</div>";
  }
  if (g.pending) return html + '<div class="empty">The owner has not answered yet.</div></section>';
  if (!g.files.length) return html + '<div class="empty">No files shared in this group yet.</div></section>';
  html += '<table><thead><tr><th>File</th><th class="num">Size</th><th class="num">Peers</th><th>Pieces</th>' +
    '<th class="num">Down</th><th class="num">Up</th><th></th></tr></thead><tbody>';
  for (const f of g.files) {
    const l = f.local;
    const down = l ? l.down : 0, up = l ? l.up : 0;
    let map = '<span class="muted">not here</span>';
    if (l) {
      const pct = l.pieces ? Math.floor((100 * l.verified) / l.pieces) : 100;
      map = '<canvas class="pieces" data-map="' + esc(l.map) + '"></canvas><div class="map-caption">' +
        l.verified + "/" + l.pieces + " pieces &middot; " + pct + "%" + (l.in_flight ? " &middot; " + l.in_flight + " in flight" : "") + "</div>";
    }
    const file = ' data-group="' + esc(g.name) + '" data-name="' + esc(f.name) + '"';
    html += '<tr data-file="' + esc(f.name) + '" data-down="' + down + '" data-up="' + up + '">' +
      '<td class="name">' + esc(f.name) + '</td><td class="num">' + bytes(f.size) + '</td><td class="num">' + f.peers_online + "</td>" +
      '<td class="map">' + map + "</td>" +
      '<td class="num down-rate">' + (down ? rate(down) : "&ndash;") + '</td><td class="num up-rate">' + (up ? rate(up) : "&ndash;") + "</td>" +
      '<td class="actions"><button data-action="download"' + file + ">Download&hellip;</button>" +
      (l ? '<button class="danger" data-action="stop-share"' + file + ">Stop sharing</button>" : "") + "</td></tr>";
  }
  return html + "</tbody></table></section>";
}

function peersTable(peers) {
  if (!peers.length) return '<div class="empty">No peer links right now.</div>';
  let html = '<table><thead><tr><th>Peer</th><th>File</th><th class="num">Down</th><th class="num">Up</th><th class="num">Asked</th></tr></thead><tbody>';
  for (const p of peers) {
    const file = p.file ? esc(p.group) + "/" + esc(p.file) : '<span class="muted">fetching from us</span>';
    html += "<tr><td>" + esc(p.addr) + "</td><td>" + file + '</td><td class="num down-rate">' + rate(p.down) +
      '</td><td class="num up-rate">' + rate(p.up) + '</td><td class="num">' + p.in_flight + "</td></tr>";
  }
  return html + "</tbody></table>";
}

function downloadsTable(list) {
  if (!list.length) return '<div class="empty">No downloads yet. Use a file&rsquo;s Download button or <code>fsd download-file</code>.</div>';
  let html = '<table><thead><tr><th>File</th><th>Progress</th><th class="num">Rate</th><th>State</th></tr></thead><tbody>';
  for (const d of list) {
    const pct = d.size ? Math.min(100, (100 * d.done) / d.size) : 100;
    html += '<tr title="' + esc(d.dest) + '"><td class="name">' + esc(d.group) + "/" + esc(d.name) + "</td>" +
      '<td><div class="bar ' + esc(d.state) + '"><span data-pct="' + pct.toFixed(1) + '"></span></div><div class="map-caption">' +
      pct.toFixed(1) + "% of " + bytes(d.size) + '</div></td><td class="num">' + rate(d.rate) + "</td><td>" +
      esc(d.error ? "failed: " + d.error : d.state) + "</td></tr>";
  }
  return html + "</tbody></table>";
}

function render(s) {
  current = s;
  $("who").textContent = s.user + " \u00b7 " + s.mountpoint + " \u00b7 pid " + s.pid;
  for (const [id, v] of [["total-down", s.total.down], ["total-up", s.total.up]]) {
    $(id).textContent = rate(v);
    $(id).dataset.bps = v;
  }
  const notice = $("notice");
  notice.hidden = !s.tracker_error;
  notice.textContent = s.tracker_error ? "No tracker answers; showing the last listing known. (" + s.tracker_error + ")" : "";
  $("groups").innerHTML = s.groups.length ? s.groups.map(groupCard).join("") :
    '<section class="card"><div class="empty">You are in no group yet: <code>fsd create-group NAME</code> or <code>fsd join-group NAME</code>.</div></section>';
  for (const c of document.querySelectorAll("canvas.pieces")) drawMap(c, c.dataset.map);
  $("peers").innerHTML = peersTable(s.peers);
  $("downloads").innerHTML = downloadsTable(s.downloads);
  // Through the CSSOM: the page's policy allows no inline styles.
  for (const b of document.querySelectorAll(".bar > span")) b.style.width = b.dataset.pct + "%";
  drawChart(s.history);
  $("stored").textContent = bytes(s.stored) + " in the piece store · cache " +
    bytes(s.cache_used) + " of " + bytes(s.cache_budget);
  $("reads").textContent = readsLine(s.kernel_reads);
}

// The words of `fsd status`'s reads line.
function readsLine(k) {
  const opens = (n) => n + (n === 1 ? " open" : " opens");
  let line = "Files held whole: " + k.how;
  if (k.passthrough) line += "; " + opens(k.passthrough_opens) + " so far, " + k.passthrough_open_now + " now";
  return line + ". Through the daemon: " + opens(k.daemon_opens) + ", " + bytes(k.daemon_read_bytes) + " read.";
}

function toast(text, error) {
  const t = $("toast");
  t.textContent = text;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

// Actions are same-origin JSON POSTs, with the token in their header.
async function act(path, body) {
  try {
    const r = await fetch(path, authed({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
    const j = await r.json().catch(() => ({ error: r.status + " " + r.statusText }));
    if (j.error) toast(j.error, true); else toast(j.ok);
    const fresh = await fetch("/api/snapshot", authed());
    if (fresh.ok) render(await fresh.json());
    return j;
  } catch (e) {
    toast(String(e), true);
    return { error: String(e) };
  }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  const d = b.dataset;
  if (d.action === "accept" || d.action === "reject") {
    b.disabled = true;
    act("/api/" + d.action, { group: d.group, user: d.user });
  } else if (d.action === "stop-share") {
    if (confirm("Stop sharing " + d.name + " in " + d.group + "? Your copy here is removed.")) act("/api/stop-share", { group: d.group, name: d.name });
  } else if (d.action === "download") {
    const dest = prompt("Download " + d.name + " to (a directory or a file path):", current ? current.download_dir : "");
    if (dest) act("/api/download", { group: d.group, name: d.name, dest: dest });
  }
});

function live(on) {
  $("live").className = on ? "live" : "live off";
  $("live").textContent = on ? "live" : "reconnecting";
}

// Server-sent events read through fetch, as EventSource cannot send a
// header: one `snapshot` event per block, reconnecting when it ends.
async function follow() {
  for (;;) {
    try {
      const r = await fetch("/api/events", authed());
      if (!r.ok) throw new Error(r.status + " " + (await r.text()));
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += text.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "snapshot" && data.length) { live(true); render(JSON.parse(data.join("\n"))); }
        }
      }
    } catch (e) {
      if (!TOKEN) return;
    }
    live(false);
    await new Promise((done) => setTimeout(done, 2000));
  }
}

let resizeTimer;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => current && render(current), 150); });

if (!TOKEN) {
  $("notice").hidden = false;
  $("notice").textContent = "This dashboard needs its access token: open the URL that `fsd ui` prints.";
  live(false);
} else {
  fetch("/api/snapshot", authed())
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.status))))
    .then(render)
    .catch(() => {});
  follow();
}
