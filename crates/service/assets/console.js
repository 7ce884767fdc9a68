// The icecast-balancer operator console. Talks only to /console/api/ on its
// own origin. Every string from the fleet, Icecast or a request is put into
// the page as text (textContent), never as markup.
"use strict";

const TOKEN_KEY = "icb-admin-token";
const REFRESH_MS = 1000;
const CHART_WINDOW_MS = 3600 * 1000;
const $ = (id) => document.getElementById(id);

/// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

/// Calls the console API; resolves to {ok, status, body}. A 401 shows the login.
async function api(path, action, payload) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { headers, cache: "no-store", credentials: "omit" };
  if (action) {
    init.method = "POST";
    headers["X-ICB-Console"] = "1";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload || {});
  }
  let response;
  try {
    response = await fetch("/console/api/" + path, init);
  } catch (e) {
    return { ok: false, status: 0, body: { error: "the admin address does not answer: " + e.message } };
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: "unreadable answer (HTTP " + response.status + ")" };
  }
  if (response.status === 401) showLogin(token ? "That token was refused." : "");
  return { ok: response.ok, status: response.status, body };
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("status").textContent = "Sign in to see this service.";
  $("login-error").textContent = message;
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
  return h > 0 ? h + "h " + m + "m" : m + "m " + (s % 60) + "s";
}

const limit = (n) => (n === null || n === undefined ? "unlimited" : String(n));
const free = (n) => (n === 4294967295 ? "unlimited" : String(n));

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || "") }, text);
}

// ---- status line ----

async function refreshStatus() {
  const r = await api("status");
  if (!r.ok) {
    if (r.status !== 401) $("status").textContent = r.body.error;
    return false;
  }
  showMain();
  const s = r.body;
  const snapshot = s.snapshot_age_ms === null ? "no snapshot yet"
    : "snapshot v" + s.snapshot_version + ", " + duration(s.snapshot_age_ms) + " old";
  const parts = [s.role + " " + s.version, "up " + duration(s.uptime_ms), snapshot,
    s.redis_ok ? "Redis ok" : "Redis unavailable"];
  if (s.role === "poller") parts.push(s.leader ? "active (holds the lease)" : "standing by");
  $("status").textContent = parts.join(" · ");
  return true;
}

// ---- fleet ----

/// The words and the severity of a server's state.
function serverBadges(server) {
  const badges = [];
  const kind = { up: "", down: "bad", full: "bad", unknown: "warn" }[server.state];
  badges.push(badge(server.state, kind));
  if (server.drained) badges.push(badge("drained", "warn"));
  if (server.stale && server.state !== "down") badges.push(badge("stale", "bad"));
  const severity = kind === "bad" || (server.stale && server.state !== "down") ? "bad"
    : server.drained || kind === "warn" ? "warn" : "";
  return { badges, severity };
}

function mountSeverity(mount, server) {
  if (server.state !== "up") return "";
  if (mount.state === "no source" || mount.state === "source stalled") return "bad";
  if (mount.free_slots === 0) return "warn";
  return "";
}

function renderFleet(servers) {
  const body = $("fleet-table").tBodies[0];
  const rows = [];
  const problems = [];
  for (const server of servers) {
    const { badges, severity } = serverBadges(server);
    if (severity === "bad") problems.push(server.name + " is " + badges.map((b) => b.textContent).join(", "));
    const reserved = server.mounts.reduce((sum, m) => sum + m.reserved, 0);
    const errors = [server.last_error, server.canary_error].filter((e) => e).join("; ");
    const button = el("button", { type: "button", "data-server": server.name,
      "data-action": server.drained ? "undrain" : "drain" }, server.drained ? "Undrain" : "Drain");
    button.addEventListener("click", () => drainOrUndrain(server.name, !server.drained));
    const poll = server.poll_age_ms === null ? "never"
      : server.last_poll_ms + " ms, " + duration(server.poll_age_ms) + " ago";
    rows.push(el("tr", { class: "server " + severity, "data-server": server.name },
      el("td", {}, server.name),
      el("td", { class: "state" }, ...badges),
      el("td", { class: "num" }, server.listeners + " / " + limit(server.max_listeners)),
      el("td", { class: "num" }, ""),
      el("td", { class: "num" }, String(reserved)),
      el("td", { class: "num" }, poll),
      el("td", { class: "error" }, errors),
      el("td", {}, button)));
    for (const mount of server.mounts) {
      const sev = mountSeverity(mount, server);
      if (sev === "bad") problems.push(server.name + mount.mount + ": " + mount.state);
      const headroom = mount.headroom ? " (" + mount.headroom + " headroom)" : "";
      rows.push(el("tr", { class: "mount " + sev, "data-server": server.name, "data-mount": mount.mount },
        el("td", {}, mount.mount + " (" + mount.stream + ")"),
        el("td", { class: "state" }, badge(mount.state, sev)),
        el("td", { class: "num" }, mount.listeners + " / " + limit(mount.max_listeners)),
        el("td", { class: "num" }, free(mount.free_slots) + headroom),
        el("td", { class: "num" }, String(mount.reserved)),
        el("td", {}, ""), el("td", {}, ""), el("td", {}, "")));
    }
  }
  body.replaceChildren(...rows);
  renderTotals(servers);
  const alert = $("problems");
  alert.hidden = problems.length === 0;
  alert.textContent = problems.length ? "Needs attention: " + problems.join(" · ") : "";
}

async function refreshFleet() {
  const r = await api("servers");
  const note = $("fleet-note");
  if (r.ok) {
    note.hidden = true;
    $("fleet-table").hidden = false;
    renderFleet(r.body.servers);
  } else if (r.status !== 401) {
    note.hidden = false;
    note.textContent = r.status === 501
      ? "This redirector reads the fleet from Redis: the poller's console shows the fleet, the streams and the audience, and drains servers."
      : r.body.error;
    $("fleet-table").hidden = r.status === 501;
    $("poll-now").hidden = r.status === 501;
  }
}

// ---- actions ----

async function act(question, path, payload) {
  if (!window.confirm(question)) return;
  const result = $("action-result");
  result.textContent = "…";
  const r = await api(path, true, payload);
  if (r.ok) {
    if (path === "drain" || path === "undrain") {
      result.textContent = r.body.server + (r.body.drained ? " drained" : " undrained")
        + (r.body.changed ? "" : " (it already was)");
    } else if (path === "poll") {
      result.textContent = "polled: snapshot v" + r.body.snapshot_version;
    } else {
      result.textContent = "reloaded: " + r.body.reloaded.join("; ");
    }
    result.className = "";
  } else {
    result.textContent = r.body.error;
    result.className = "error";
  }
  refreshFleet();
}

function drainOrUndrain(name, drain) {
  if (drain) {
    act("Drain " + name + "? New players go elsewhere; its listeners stay.", "drain", { server: name });
  } else {
    act("Undrain " + name + "? It takes new players again.", "undrain", { server: name });
  }
}

// ---- streams ----

function renderChart(history, now, names) {
  const chart = $("chart");
  const [width, height, left, bottom, top] = [600, 220, 40, 20, 10];
  const end = Date.now();
  const start = end - CHART_WINDOW_MS;
  const points = history.filter((h) => h.t >= start);
  points.push({ t: end, listeners: now });
  let max = 1;
  for (const p of points) for (const n of names) max = Math.max(max, p.listeners[n] || 0);
  const x = (t) => left + ((t - start) / CHART_WINDOW_MS) * (width - left - 5);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const nodes = [
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - 5, y2: height - bottom }),
  ];
  const label = (text, attrs) => { const t = svg("text", attrs); t.textContent = text; return t; };
  nodes.push(label(String(max), { x: 4, y: top + 8 }), label("0", { x: 4, y: height - bottom }));
  nodes.push(label("-60 min", { x: left, y: height - 4 }), label("now", { x: width - 30, y: height - 4 }));
  names.forEach((name, i) => {
    const line = points.map((p) => x(p.t).toFixed(1) + "," + y(p.listeners[name] || 0).toFixed(1));
    nodes.push(svg("polyline", { class: "c" + (i % 8), points: line.join(" ") }));
  });
  chart.replaceChildren(...nodes);
  const legend = el("span", { class: "legend" }, ...names.map((name, i) =>
    el("span", {}, el("i", { class: "c" + (i % 8) }), name)));
  $("chart-caption").replaceChildren("Listeners per stream across all relays, last hour (a sample every 15 s). ", legend);
}

/// Listeners per stream across all relays, from the fleet just shown, so
/// the two tables always agree.
let latestTotals = null;

function renderTotals(servers) {
  const totals = {};
  for (const server of servers) {
    for (const mount of server.mounts) totals[mount.stream] = (totals[mount.stream] || 0) + mount.listeners;
  }
  latestTotals = totals;
  $("streams-table").tBodies[0].replaceChildren(...Object.keys(totals).sort().map((name) =>
    el("tr", { "data-stream": name }, el("td", {}, name), el("td", { class: "num" }, String(totals[name])))));
}

async function refreshStreams() {
  const r = await api("streams");
  const note = $("streams-note");
  if (!r.ok) {
    if (r.status === 401) return;
    note.hidden = false;
    note.textContent = r.status === 501 ? "The poller's console shows the streams." : r.body.error;
    $("streams-body").hidden = true;
    return;
  }
  note.hidden = true;
  $("streams-body").hidden = false;
  const now = latestTotals || r.body.now;
  renderChart(r.body.history, now, Object.keys(now).sort());
}

// ---- audience ----

/// A session-length bound in words: 300 → "5 min", 7200 → "2 h".
function span(seconds) {
  return seconds < 3600 ? seconds / 60 + " min" : seconds / 3600 + " h";
}

/// A table of counts, largest first unless `inOrder`.
function countTable(title, counts, inOrder) {
  const rows = Object.entries(counts);
  if (!inOrder) rows.sort((a, b) => b[1] - a[1]);
  return el("div", {}, el("h3", {}, title), el("table", {}, el("tbody", {}, ...rows.map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", { class: "num" }, String(v)))))));
}

async function refreshAudience() {
  const r = await api("audience");
  const body = $("audience-body");
  if (!r.ok) {
    if (r.status !== 401) body.replaceChildren(el("p", { class: "note" }, r.body.error));
    return;
  }
  if (r.body.at_ms === null) {
    body.replaceChildren(el("p", { class: "note" },
      "No listener lists read yet. The poller reads them every [poller] audience_interval (\"off\" disables)."));
    return;
  }
  const parts = [el("p", {}, "Listeners across all relays as of " + new Date(r.body.at_ms).toLocaleTimeString() + ".")];
  for (const [stream, seen] of Object.entries(r.body.streams)) {
    parts.push(el("h3", {}, stream + ": " + seen.listeners + " listeners"));
    if (seen.listeners === 0) continue;
    let below = "";
    const sessions = {};
    for (const [bound, n] of seen.sessions) {
      const upper = bound === "more" ? null : span(parseInt(bound, 10));
      sessions[upper === null ? "over " + below : below ? below + " to " + upper : "under " + upper] = n;
      if (upper !== null) below = upper;
    }
    parts.push(
      el("div", { class: "columns", "data-stream": stream },
        countTable("Countries", seen.countries), countTable("Players", seen.families),
        countTable("Connected for", sessions, true)));
  }
  body.replaceChildren(...parts);
}

// ---- explain ----

async function explain(event) {
  event.preventDefault();
  const query = new URLSearchParams({ stream: $("explain-stream").value, ip: $("explain-ip").value,
    scheme: $("explain-scheme").value });
  const out = $("explain-result");
  const r = await api("explain?" + query);
  if (!r.ok) {
    out.replaceChildren(el("p", { class: "error" }, r.body.error));
    return;
  }
  const c = r.body.client;
  const client = "Client: country " + (c.country || "unknown") + ", continent " + (c.continent || "unknown")
    + ", AS " + (c.asn || "unknown");
  const candidates = r.body.candidates.map((k) => el("li", {}, k.server + " " + k.mount + ", free "
    + free(k.free_slots) + (k.distance_km === null ? "" : ", " + Math.round(k.distance_km) + " km")
    + ": " + k.reason + " → " + k.url));
  const excluded = r.body.excluded.map((e) => el("li", {}, e.server + " " + e.mount + ": " + e.reason
    + (e.detail ? " (" + e.detail + ")" : "")));
  out.replaceChildren(el("p", {}, client),
    el("h3", {}, "Candidates, best first"),
    candidates.length ? el("ol", { id: "explain-candidates" }, ...candidates)
      : el("p", {}, "No candidate: the player would get the fallback stream or 503."),
    el("h3", {}, "Left out"),
    excluded.length ? el("ul", { id: "explain-excluded" }, ...excluded) : el("p", {}, "None."));
}

// ---- start ----

let slowStarted = false;

/// Every second, or less often when a refresh is slow (a big fleet), so an
/// open console never keeps the service busy more than a fifth of the time.
async function tick() {
  const started = Date.now();
  if (!document.hidden && await refreshStatus()) {
    await refreshFleet();
    if (!slowStarted) {
      slowStarted = true;
      slowTick();
    }
  }
  setTimeout(tick, Math.max(REFRESH_MS, 5 * (Date.now() - started)));
}

/// Stream totals and the audience change slowly: every 5 s.
async function slowTick() {
  if (!document.hidden && !$("main").hidden) {
    await refreshStreams();
    await refreshAudience();
  }
  setTimeout(slowTick, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    if (await refreshStatus()) await refreshFleet();
  });
  $("poll-now").addEventListener("click", () => act("Poll every server now?", "poll"));
  $("reload").addEventListener("click", () => act("Reload the fleet file and GeoIP databases?", "reload"));
  $("explain-form").addEventListener("submit", explain);
  tick();
});
