// threadtide dashboard: polls /api/snapshot and /api/history, draws one chart per queue on a
// <canvas>, lists processes and dead letters; with --allow-actions, sends changes with the token.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const fmtAge = (ms) => {
  if (ms == null || ms < 0) return "";
  const s = Math.round(ms / 1000);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
};
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : "");

const state = {
  snap: null,
  history: {},   // key -> {samples: [[t, backlog, alive, busy, target]], events: [], since: ms}
  dead: { queue: null, offset: 0, limit: 50, reason: "", contains: "", page: null, scanStack: [] },
  detail: null,
  detailHex: false,
  pending: null, // the change waiting for confirmation
};

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: "bad JSON from " + url }));
  if (!r.ok) throw new Error(body.error || r.status);
  return body;
}

async function post(path, fields) {
  const form = new URLSearchParams(fields);
  const r = await fetch(path, {
    method: "POST", body: form,
    headers: { "Authorization": "Bearer " + $("token").value,
      "Content-Type": "application/x-www-form-urlencoded" },
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}

function say(text, ok = true) {
  const m = ok ? $("message") : $("error");
  m.textContent = text; m.hidden = false;
  if (ok) { clearTimeout(say.t); say.t = setTimeout(() => { m.hidden = true; }, 6000); }
}

function ask(text, run) {
  state.pending = run;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
}
$("confirm-yes").addEventListener("click", async () => {
  const run = state.pending; state.pending = null; $("confirm").hidden = true;
  if (run) { try { await run(); } catch (e) { say(String(e.message || e), false); } }
});
$("confirm-no").addEventListener("click", () => { state.pending = null; $("confirm").hidden = true; });

// ---- queues and charts ----

function queueCard(q) {
  let card = document.querySelector(`section.queue[data-key="${CSS.escape(q.key)}"]`);
  if (!card) {
    const counts = el("div", { class: "counts" });
    for (const f of ["backlog", "delayed", "processing", "dead", "alive", "busy", "target", "workers", "processes"]) {
      counts.append(el("span", {}, f + " ", el("b", { "data-field": f, text: "0" })));
    }
    const legend = el("div", { class: "legend" });
    for (const [n, c] of [["backlog", "--backlog"], ["alive", "--alive"], ["busy", "--busy"], ["target", "--target"]]) {
      const i = el("i"); i.style.background = `var(${c})`;
      legend.append(el("span", {}, i, n));
    }
    const pause = el("button", { type: "button", class: "pause act", hidden: "", "data-action": "pause" });
    pause.addEventListener("click", () => togglePause(card.dataset.key, card.dataset.paused === "1"));
    card = el("section", { class: "queue", "data-key": q.key },
      el("h3", {}, el("span", { "data-field": "name" }), el("span", { class: "key", text: q.key }),
        el("span", { class: "paused-mark", "data-field": "paused", hidden: "" , text: "paused" }),
        el("span", { class: "reasons", "data-field": "reasons" }), pause),
      counts, el("canvas", { width: "860", height: "340" }), legend,
      el("ul", { class: "events" }));
    $("queues").append(card);
  }
  return card;
}

function renderQueues(s) {
  const actions = s.actions;
  for (const q of s.queues) {
    const card = queueCard(q);
    const set = (f, v) => { const e = card.querySelector(`[data-field="${f}"]`); if (e) e.textContent = v; };
    set("name", q.name);
    for (const f of ["backlog", "delayed", "processing", "dead", "alive", "busy", "target", "workers", "processes"]) set(f, q[f]);
    card.querySelector('[data-field="paused"]').hidden = !q.paused;
    card.dataset.paused = q.paused ? "1" : "0";
    set("reasons", (q.reasons || []).join(", "));
    const b = card.querySelector("button.pause");
    b.hidden = !actions; b.textContent = q.paused ? "Resume" : "Pause";
  }
  for (const card of document.querySelectorAll("section.queue")) {
    if (!s.queues.some((q) => q.key === card.dataset.key)) card.remove();
  }
}

async function togglePause(key, paused) {
  try {
    await post(paused ? "/api/resume" : "/api/pause", { queue: key });
    say((paused ? "Resumed " : "Paused ") + key);
  } catch (e) { say(`${paused ? "resume" : "pause"} ${key}: ${e.message}`, false); }
}

async function loadHistory(key) {
  const h = state.history[key] || (state.history[key] = { samples: [], events: [], since: 0 });
  // Events reach the stream a little after their time: ask again for the last 30 s of them
  // (duplicates are dropped by id).
  const evSince = h.since ? h.since - 30000 : 0;
  const d = await getJSON(`/api/history?queue=${encodeURIComponent(key)}&since_ms=${h.since}&events_since_ms=${evSince}`);
  for (const s of d.samples) h.samples.push(s);
  for (const e of d.events) h.events.push(e);
  if (h.samples.length) h.since = Math.max(h.since, h.samples[h.samples.length - 1][0]);
  const keep = 86400 * 1000;
  const cut = (h.since || 0) - keep;
  while (h.samples.length && h.samples[0][0] < cut) h.samples.shift();
  while (h.events.length > 10000) h.events.shift();
  dedupEvents(h);
  return h;
}

function dedupEvents(h) {
  const seen = new Set();
  h.events = h.events.filter((e) => (seen.has(e.id) ? false : (seen.add(e.id), true)));
}

function cssVar(n) { return getComputedStyle(document.documentElement).getPropertyValue(n).trim(); }

function drawChart(card, h, now) {
  const canvas = card.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, padL = 54, padR = 40, padT = 12, padB = 28;
  const windowMs = Number($("window").value) * 1000;
  const t0 = now - windowMs;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "18px system-ui, sans-serif";
  const samples = h.samples.filter((s) => s[0] >= t0);
  const events = h.events.filter((e) => e.time_ms >= t0);
  // Before the dashboard's own samples, the stored events give the backlog and the new size.
  const firstSample = samples.length ? samples[0][0] : now;
  const older = events.filter((e) => e.time_ms < firstSample);
  let maxB = 1, maxT = 1;
  for (const s of samples) { maxB = Math.max(maxB, s[1]); maxT = Math.max(maxT, s[2], s[3], s[4]); }
  for (const e of older) { maxB = Math.max(maxB, e.backlog || 0); maxT = Math.max(maxT, e.to || 0, e.from || 0); }
  maxB = niceMax(Math.max(4, maxB)); maxT = niceMax(Math.max(4, maxT));
  const x = (t) => padL + ((t - t0) / windowMs) * (W - padL - padR);
  const yB = (v) => H - padB - (v / maxB) * (H - padT - padB);
  const yT = (v) => H - padB - (v / maxT) * (H - padT - padB);
  ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = padT + (i / 4) * (H - padT - padB);
    ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(W - padR, y); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(String(Math.round(maxB * (1 - i / 4))), padL - 6, y + 6);
    ctx.textAlign = "left"; ctx.fillText(String(Math.round(maxT * (1 - i / 4))), W - padR + 6, y + 6);
  }
  ctx.textAlign = "center";
  ctx.fillText(`-${Math.round(windowMs / 60000)} min`, padL + 30, H - 6);
  ctx.fillText("now", W - padR - 10, H - 6);
  // Event markers: a dashed line at each scaling decision, labelled with the new size.
  ctx.setLineDash([4, 4]); ctx.strokeStyle = "#9ca3af";
  for (const e of events) {
    const ex = x(e.time_ms);
    ctx.beginPath(); ctx.moveTo(ex, padT); ctx.lineTo(ex, H - padB); ctx.stroke();
    ctx.fillStyle = "#374151"; ctx.fillText(`${e.from}\u2192${e.to}`, ex, padT + 14);
  }
  ctx.setLineDash([]);
  const line = (color, pts, y) => {
    if (!pts.length) return;
    ctx.strokeStyle = color; ctx.lineWidth = 2.5; ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
  };
  const stored = (f) => older.map((e) => [e.time_ms, e[f] || 0]);
  line(cssVar("--backlog"), stored("backlog").concat(samples.map((s) => [s[0], s[1]])), yB);
  line(cssVar("--target"), stored("to").concat(samples.map((s) => [s[0], s[4]])), yT);
  line(cssVar("--alive"), samples.map((s) => [s[0], s[2]]), yT);
  line(cssVar("--busy"), samples.map((s) => [s[0], s[3]]), yT);
  // What the chart shows, for people reading the DOM (and for the browser test).
  const peak = samples.reduce((m, s) => Math.max(m, s[1]), 0);
  canvas.dataset.points = String(samples.length);
  canvas.dataset.peakBacklog = String(peak);
  canvas.dataset.lastBacklog = samples.length ? String(samples[samples.length - 1][1]) : "";
  canvas.dataset.events = String(events.length);
  const ul = card.querySelector("ul.events");
  ul.replaceChildren(...events.slice(-20).reverse().map((e) =>
    el("li", { text: `${new Date(e.time_ms).toLocaleTimeString()} ${e.from}\u2192${e.to} ` +
      `(${e.reason}, backlog ${e.backlog}) on ${e.process}` })));
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---- processes ----

function renderProcesses(s) {
  const rows = s.processes.map((p) => {
    const qs = (p.queues || []).map((q) => `${q.queue || q.key} ${q.alive}/${q.busy}/${q.target}`).join(", ");
    const hb = p.heartbeat_ms ? fmtAge(s.time_ms - p.heartbeat_ms) + " ago" : "";
    return el("tr", { class: p.gone ? "gone" : "live", "data-id": p.id },
      el("td", { class: p.gone ? "status-gone" : "status-live",
        text: p.gone ? `GONE (${fmtAge(s.time_ms - p.gone_since_ms)})` : "live" }),
      el("td", { text: p.host ?? "" }), el("td", { class: "num", text: p.pid ?? "" }),
      el("td", { text: p.version ?? "" }), el("td", { text: p.gone ? "" : fmtAge(p.uptime_ms) }),
      el("td", { text: qs }), el("td", { text: hb }), el("td", { text: p.id }));
  });
  $("processes").tBodies[0].replaceChildren(...rows);
  const gone = s.processes.filter((p) => p.gone).length;
  $("process-count").textContent = `${s.processes.length - gone} live` + (gone ? `, ${gone} gone` : "");
}

// ---- dead letters ----

function deadParams() {
  const d = state.dead;
  return { queue: d.queue, reason: d.reason, contains: d.contains };
}

async function loadDead() {
  const d = state.dead;
  if (!d.queue) return;
  const q = new URLSearchParams({ ...deadParams(), offset: d.offset, limit: d.limit });
  // Only the newest request draws: an older one (say a refresh's, with the filter as it was)
  // that answers late must not overwrite what a newer one showed.
  const seq = (d.seq = (d.seq || 0) + 1);
  let page;
  try {
    page = await getJSON("/api/dead?" + q);
  } catch (e) {
    if (seq === d.seq) $("dead-info").textContent = "dead letters: " + e.message;
    return;
  }
  if (seq !== d.seq) return;
  d.page = page;
  const p = d.page;
  const rows = p.items.map((it) => el("tr", { "data-index": it.index },
    el("td", { class: "num", text: it.index }), el("td", { text: fmtTime(it.time_ms) }),
    el("td", { text: it.reason ?? "" }), el("td", { text: it.error ?? "" }),
    el("td", { class: "num", text: it.attempts ?? "" }), el("td", { text: it.worker ?? "" }),
    el("td", { class: "payload", text: it.payload_text }),
    el("td", {}, el("button", { type: "button", class: "view", text: "view", onclick: () => showDead(it.index) }))));
  $("dead").tBodies[0].replaceChildren(...rows);
  const last = p.items.length ? p.items[p.items.length - 1].index : p.offset;
  $("dead-info").textContent = p.filtered
    ? `${p.items.length} matching shown, from #${p.offset}` + (p.next_offset != null ? `, more from #${p.next_offset}` : ", to the end") + ` of ${p.total}`
    : `${p.items.length ? "#" + p.offset + "-" + last : "none"} of ${p.total} (0 is the oldest)`;
  $("dead-info").dataset.total = String(p.total);
}

async function showDead(index) {
  try {
    state.detail = await getJSON(`/api/dead/show?queue=${encodeURIComponent(state.dead.queue)}&index=${index}`);
  } catch (e) { say("dead letter: " + e.message, false); return; }
  renderDetail();
}

function renderDetail() {
  const it = state.detail;
  $("dead-detail").hidden = !it;
  if (!it) return;
  $("detail-title").textContent = `#${it.index} ${it.reason} (${it.payload_bytes} bytes${it.utf8 ? "" : ", not UTF-8"})`;
  $("detail-payload").textContent = state.detailHex
    ? it.payload_hex.replace(/(..)/g, "$1 ").replace(/((?:.. ){16})/g, "$1\n") : it.payload_text;
}

function bulk(requeue) {
  const d = state.dead; const path = requeue ? "/api/dead/requeue" : "/api/dead/purge";
  return async () => {
    const dry = await post(path, { ...deadParams(), dry_run: "1" });
    const what = requeue ? "Requeue" : "Purge";
    ask(`${what} ${dry.matched} dead letter(s) of ${d.queue}` +
      (d.reason || d.contains ? " matching the filter" : "") + "?", async () => {
      // Exactly the counted records: a record that came to match meanwhile is not moved.
      const r = await post(path, { ...deadParams(), limit: dry.matched });
      say(`${what}d ${r.moved} of ${r.matched} dead letter(s) of ${d.queue}` +
        (r.unreadable ? `, ${r.unreadable} unreadable left alone` : "") + (r.gone ? `, ${r.gone} gone meanwhile` : ""));
      d.offset = 0; await loadDead();
    });
  };
}

function single(requeue) {
  return () => {
    const it = state.detail; if (!it) return;
    const what = requeue ? "Requeue" : "Purge";
    ask(`${what} dead letter #${it.index} of ${state.dead.queue}?`, async () => {
      const r = await post(requeue ? "/api/dead/requeue" : "/api/dead/purge",
        { queue: state.dead.queue, index: it.index, record_sha1: it.record_sha1 });
      say(r.moved ? `${what}d dead letter #${it.index}` : `dead letter #${it.index} had changed: nothing done`, r.moved > 0);
      state.detail = null; renderDetail(); await loadDead();
    });
  };
}

const wrap = (f) => async () => { try { await f()(); } catch (e) { say(String(e.message || e), false); } };
$("dead-requeue-all").addEventListener("click", wrap(() => bulk(true)));
$("dead-purge-all").addEventListener("click", wrap(() => bulk(false)));
$("detail-requeue").addEventListener("click", wrap(() => single(true)));
$("detail-purge").addEventListener("click", wrap(() => single(false)));
$("detail-text").addEventListener("click", () => { state.detailHex = false; renderDetail(); });
$("detail-hex").addEventListener("click", () => { state.detailHex = true; renderDetail(); });
$("detail-close").addEventListener("click", () => { state.detail = null; renderDetail(); });
$("dead-apply").addEventListener("click", () => {
  const d = state.dead; d.reason = $("dead-reason").value; d.contains = $("dead-contains").value;
  d.offset = 0; d.scanStack = []; loadDead();
});
$("dead-queue").addEventListener("change", () => {
  const d = state.dead; d.queue = $("dead-queue").value; d.offset = 0; d.scanStack = [];
  state.detail = null; renderDetail(); loadDead();
});
$("dead-next").addEventListener("click", () => {
  const d = state.dead, p = d.page; if (!p) return;
  if (p.next_offset == null) return;
  d.scanStack.push(d.offset); d.offset = p.next_offset;
  loadDead();
});
$("dead-prev").addEventListener("click", () => {
  const d = state.dead, p = d.page; if (!p) return;
  d.offset = d.scanStack.pop() ?? 0;
  loadDead();
});
$("dead-newest").addEventListener("click", () => {
  const d = state.dead, p = d.page; if (!p) return;
  d.scanStack = []; d.offset = Math.max(0, p.total - d.limit);
  loadDead();
});
$("window").addEventListener("change", () => render());
$("token").value = sessionStorage.getItem("threadtide-token") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("threadtide-token", $("token").value));

// ---- the loop ----

let lastDeadCount = null;

function render() {
  const s = state.snap; if (!s) return;
  for (const q of s.queues) {
    const card = queueCard(q); const h = state.history[q.key];
    if (h) drawChart(card, h, s.time_ms);
  }
}

async function tick() {
  try {
    const s = await getJSON("/api/snapshot");
    state.snap = s;
    $("fleet").textContent = "fleet " + (s.fleet || "");
    $("redis").textContent = s.redis || "";
    $("mode").textContent = s.actions ? "actions allowed" : "read-only";
    $("mode").className = "badge" + (s.actions ? " actions" : "");
    $("token-box").hidden = !s.actions;
    for (const a of document.querySelectorAll("span.act")) a.hidden = !s.actions;
    $("updated").textContent = s.time_ms ? "updated " + new Date(s.time_ms).toLocaleTimeString() : "";
    $("updated").dataset.time = String(s.time_ms || "");
    $("error").hidden = !s.error; if (s.error) $("error").textContent = (s.stale ? "stale: " : "") + s.error;
    renderQueues(s);
    renderProcesses(s);
    await Promise.all(s.queues.map((q) => loadHistory(q.key)));
    render();
    const sel = $("dead-queue");
    const keys = s.queues.map((q) => q.key);
    if ([...sel.options].map((o) => o.value).join() !== keys.join()) {
      sel.replaceChildren(...keys.map((k) => el("option", { value: k, text: k })));
      if (!keys.includes(state.dead.queue)) state.dead.queue = keys[0] || null;
      sel.value = state.dead.queue || "";
    }
    const dq = s.queues.find((q) => q.key === state.dead.queue);
    if (dq && dq.dead !== lastDeadCount) { lastDeadCount = dq.dead; await loadDead(); }
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    if (!document.body.dataset.firstDataMs) document.body.dataset.firstDataMs = String(Math.round(performance.now()));
  } catch (e) {
    $("error").textContent = "dashboard unreachable: " + e.message; $("error").hidden = false;
  }
  setTimeout(tick, (state.snap && state.snap.refresh_ms) || 1000);
}
tick();
