/* emotion-edge dashboard: one page, its data from the JSON API and the /api/events stream (no CDN). */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const HISTORY_S = 120;
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4b5563"];
  const ee = { status: null, seconds: [], received: 0, latency: [], pending: null, last: null, collecting: false };
  window.ee = ee;  // for people poking at it, and for the browser tests

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
      err.status = r.status; err.field = data && data.field;
      throw err;
    }
    return data;
  }

  function say(id, text, error) { const m = $(id); m.textContent = text; m.classList.toggle("error", !!error); }
  const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v * 100)} %`);
  const num = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const when = (iso) => new Date(iso).toLocaleString();
  function progress(id, fraction) {
    const p = $(id); p.hidden = fraction === null;
    if (fraction !== null) p.firstElementChild.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  }

  // -- live chart ---------------------------------------------------------------------------------
  let live = null;
  const strip = $("quality-strip");
  for (let i = 0; i < HISTORY_S; i++) strip.append(el("i"));
  function liveData() {
    const s = ee.seconds;
    return [s.map((r) => r.wall), s.map((r) => r.skin_conductance), s.map((r) => r.bpm)];
  }
  function chartWidth(node) { return Math.max(260, node.clientWidth || 600); }
  function makeLive() {
    const node = $("live");
    live = new uPlot({
      width: chartWidth(node), height: 220,
      scales: { x: { time: true }, us: { auto: true }, bpm: { auto: true } },
      series: [{}, { label: "conductance µS", scale: "us", stroke: "#0d9488", width: 2, value: (u, v) => num(v, 2) },
        { label: "heart rate BPM", scale: "bpm", stroke: "#dc2626", width: 2, value: (u, v) => num(v, 0) }],
      axes: [{}, { scale: "us", size: 48, stroke: "#0d9488" },
        { scale: "bpm", side: 1, size: 44, grid: { show: false }, stroke: "#dc2626" }],
    }, liveData(), node);
  }
  function drawLive() {
    if (!live) return;
    live.setData(liveData());
    $("live").dataset.points = String(ee.seconds.length);
    const cells = strip.children, s = ee.seconds, offset = HISTORY_S - s.length;
    for (let i = 0; i < HISTORY_S; i++) cells[i].className = i >= offset ? s[i - offset].quality : "";
  }
  function onSecond(rec) {
    ee.received += 1;
    ee.latency.push(Date.now() / 1000 - rec.emitted);  // the sampler's hand-over to this page, seconds
    if (ee.latency.length > 2000) ee.latency.shift();
    ee.seconds.push(rec);
    if (ee.seconds.length > HISTORY_S) ee.seconds.shift();
    drawLive();
    $("now-scl").textContent = num(rec.skin_conductance, 2);
    $("now-bpm").textContent = num(rec.bpm, 0);
    $("now-contact").textContent = pct(rec.contact);
    const q = $("now-quality"); q.textContent = rec.quality.replace("_", " "); q.className = `q ${rec.quality}`;
    onJob(rec.job);
  }

  // -- jobs: detection and collect progress ----------------------------------------------------------
  function onJob(job) {
    if (job && job.kind === "detect") {
      progress("detect-progress", job.duration_s ? job.elapsed_s / job.duration_s : 0);
      if (job.request_id === ee.pending) say("detect-msg", `measuring… ${Math.round(job.elapsed_s)} of ${job.duration_s} s`);
    }
    if (job && job.kind === "collect") {
      ee.collecting = true;
      progress("collect-progress", job.elapsed_s / job.duration_s);
      say("collect-msg", `collecting "${job.label}": ${Math.round(job.elapsed_s)} of ${job.duration_s} s`);
    } else if (ee.collecting) {
      ee.collecting = false;
      progress("collect-progress", 1);
      say("collect-msg", "session ended");
      setTimeout(() => { if (!ee.collecting) progress("collect-progress", null); }, 1500);
    }
  }

  $("detect").addEventListener("click", async () => {
    const button = $("detect");
    button.disabled = true;
    say("detect-msg", "starting…");
    try {
      const r = await api("POST", "/api/detect", {});
      ee.pending = r.request_id;
      progress("detect-progress", 0);
      say("detect-msg", `measuring for ${r.window_s} s… (request ${r.request_id})`);
    } catch (e) {
      say("detect-msg", e.message, true);
      button.disabled = false;
    }
  });

  // -- results -----------------------------------------------------------------------------------
  function feedbackControls(result, onDone) {
    const box = el("div", { class: "feedback" });
    const emotions = (ee.status && ee.status.emotions) || [];
    const send = async (label) => {
      try {
        await api("POST", "/api/feedback", { request_id: result.request_id, label });
        onDone(label);
      } catch (e) { onDone(null, e.message); }
    };
    if (emotions.includes(result.emotion)) {
      box.append(el("button", { type: "button", class: "confirm", onclick: () => send(result.emotion) }, "Right ✓"));
    }
    box.append(el("span", { class: "muted" }, "Actually:"));
    for (const e of emotions) {
      if (e !== result.emotion) box.append(el("button", { type: "button", class: "correct", "data-label": e, onclick: () => send(e) }, e));
    }
    return box;
  }
  function correctionSelect(result, onDone) {
    const emotions = (ee.status && ee.status.emotions) || [];
    const select = el("select", { "aria-label": "correct this result" }, el("option", { value: "" }, "confirm / correct…"));
    for (const e of emotions) select.append(el("option", { value: e }, e === result.emotion ? `✓ ${e} (right)` : e));
    select.addEventListener("change", async () => {
      if (!select.value) return;
      try {
        await api("POST", "/api/feedback", { request_id: result.request_id, label: select.value });
        onDone(select.value);
      } catch (e) { onDone(null, e.message); }
    });
    return select;
  }
  function showResult(r) {
    ee.last = r;
    $("result").hidden = false;
    $("r-emotion").textContent = r.emotion;
    $("r-uncertain").hidden = r.emotion !== "uncertain";
    $("r-confidence").textContent = r.confidence === null ? "" : `confidence ${pct(r.confidence)}`;
    $("r-basis").textContent = r.basis;
    $("r-arousal").textContent = r.arousal;
    $("r-time").textContent = when(r.timestamp);
    $("r-id").textContent = r.request_id;
    $("r-notes").textContent = r.notes || "";
    const bars = $("r-bars");
    bars.replaceChildren(el("span"), el("span", { class: "h" }, "face"), el("span", { class: "h" }, "physiology"),
      el("span", { class: "h" }, "fused"));
    for (const e of (ee.status && ee.status.emotions) || []) {
      bars.append(el("span", {}, e));
      for (const [kind, key] of [["face", `face_${e}`], ["physiology", `physio_${e}`], ["fused", `p_${e}`]]) {
        const v = r[key];
        const bar = el("div", { class: `bar ${kind}${v === null || v === undefined ? " none" : ""}`, title: `${kind} ${pct(v)}` });
        if (v !== null && v !== undefined) { const fill = el("i"); fill.style.width = `${v * 100}%`; bar.append(fill); }
        bars.append(bar);
      }
    }
    const fb = $("r-feedback");
    fb.replaceChildren(feedbackControls(r, (label, error) => {
      if (error) { fb.append(el("span", { class: "msg error" }, error)); return; }
      fb.replaceChildren(el("span", { class: "msg" }, `saved: ${label} (thank you)`));
      setTimeout(loadHistory, 800);
    }));
  }
  function onResult(r) {
    if (r.request_id === ee.pending) {
      ee.pending = null;
      $("detect").disabled = false;
      progress("detect-progress", null);
      say("detect-msg", "");
    }
    showResult(r);
    loadHistory();
  }

  // -- history -----------------------------------------------------------------------------------
  let timeline = null;
  function drawTimeline(results) {
    const node = $("timeline");
    const rows = [...results].reverse();
    const names = [...new Set([...((ee.status && ee.status.emotions) || []), "uncertain", "unknown"])];
    const xs = rows.map((r) => Date.parse(r.timestamp) / 1000);
    const data = [xs, ...names.map((n) => rows.map((r) => (r.emotion === n ? (r.confidence === null ? 0 : r.confidence) : null)))];
    const opts = {
      width: chartWidth(node), height: 160,
      scales: { x: { time: true, range: (u, lo, hi) => (hi - lo < 600 ? [lo - 300, hi + 300] : [lo - (hi - lo) * 0.03, hi + (hi - lo) * 0.03]) },
        y: { range: [0, 1] } },
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], paths: () => null,
        points: { show: true, size: 9, fill: COLORS[i % COLORS.length] }, value: (u, v) => pct(v) }))],
      axes: [{}, { size: 50, values: (u, vals) => vals.map((v) => `${Math.round(v * 100)}%`) }],
    };
    if (timeline) timeline.destroy();
    timeline = new uPlot(opts, data, node);
  }
  async function loadHistory() {
    const user = $("h-user").value, day = $("h-day").value;
    const q = new URLSearchParams({ limit: "50" });
    if (user) q.set("user", user);
    if (day) q.set("day", day);
    let data;
    try { data = await api("GET", `/api/results?${q}`); } catch (e) { return; }
    const select = $("h-user");
    const known = new Set([...select.options].map((o) => o.value));
    for (const u of data.users) if (!known.has(u)) select.append(el("option", { value: u }, u));
    const body = $("history").tBodies[0];
    body.replaceChildren(...data.results.map((r) => {
      const cell = el("td", { class: "fb" });
      const render = (label, error) => {
        if (label) cell.replaceChildren(el("b", {}, label), " ", el("span", { class: "muted" }, "(corrected)"));
        else if (error) cell.append(el("span", { class: "msg error" }, error));
      };
      if (r.feedback_label) render(r.feedback_label); else cell.append(correctionSelect(r, render));
      return el("tr", { "data-request-id": r.request_id }, el("td", {}, when(r.timestamp)), el("td", {}, r.emotion),
        el("td", {}, pct(r.confidence)), el("td", {}, r.basis), el("td", {}, r.arousal), el("td", {}, r.user), cell);
    }));
    drawTimeline(data.results);
  }
  $("history-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(); });

  // -- collect -------------------------------------------------------------------------------------
  $("collect-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/collect", { label: $("collect-label").value,
        duration_s: Number($("collect-duration").value) });
      say("collect-msg", `queued: "${r.label}" for ${r.duration_s} s`);
      progress("collect-progress", 0);
    } catch (e) { say("collect-msg", e.message, true); }
  });
  $("collect-stop").addEventListener("click", async () => {
    try { await api("POST", "/api/stop", {}); say("collect-msg", "stopping…"); } catch (e) { say("collect-msg", e.message, true); }
  });

  // -- status and alerts ---------------------------------------------------------------------------
  function duration(s) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${m} min` : m ? `${m} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;
  }
  function showStatus(s) {
    const first = ee.status === null;
    ee.status = s;
    $("device-id").textContent = s.device_id;
    if (first) {
      $("collect-label").replaceChildren(...s.labels.map((l) => el("option", { value: l }, l)));
      if (ee.last) showResult(ee.last);
    }
    const pm = s.personal_model;
    const rows = [
      ["broker", `${s.broker.connected ? "connected" : "not connected"} (${s.broker.host}:${s.broker.port})`],
      ["outbox", `${s.outbox.pending} waiting · ${s.outbox.dropped} dropped`],
      ["hat", `${s.hat.state}${s.hat.simulated ? " (simulated)" : ""}`],
      ["camera", s.camera.present ? s.camera.backend : "none"],
      ["face model", s.face_model.loaded ? s.face_model.file : "not loaded"],
      ["personal model", pm.version === null ? `none yet for ${pm.user}` :
        `v${pm.version} for ${pm.user}, leave-one-session-out accuracy ${num(pm.loso_accuracy, 2)}, macro-F1 ${num(pm.loso_macro_f1, 2)}`],
      ["job", s.job ? `${s.job.kind} (${Math.round(s.job.elapsed_s)} s)` : "idle"],
      ["uptime", duration(s.uptime_s)], ["viewers", s.clients], ["version", s.version],
    ];
    $("status").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k }, v)]));
    $("status").querySelector('[data-key="broker"]').className = s.broker.connected ? "q ok" : "q no_contact";
    showAlerts(s.alerts);
  }
  function showAlerts(alerts) {
    const list = $("alerts");
    if (!alerts.length) { list.replaceChildren(el("li", { class: "muted" }, "none")); return; }
    list.replaceChildren(...alerts.map((a) => el("li", { class: "alert" }, `${when(a.timestamp)} · ${a.rule}: ${a.message}`)));
  }
  function onAlert(a) {
    if (!ee.status) return;
    ee.status.alerts = [a, ...(ee.status.alerts || [])].slice(0, 10);
    showAlerts(ee.status.alerts);
  }

  // -- wiring ----------------------------------------------------------------------------------------
  function connect() {
    const es = new EventSource("/api/events");
    const pill = $("conn");
    es.addEventListener("open", () => { pill.textContent = "live"; pill.className = "pill on"; });
    es.addEventListener("error", () => { pill.textContent = "reconnecting…"; pill.className = "pill off"; });
    es.addEventListener("second", (e) => onSecond(JSON.parse(e.data)));
    es.addEventListener("result", (e) => onResult(JSON.parse(e.data)));
    es.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
    es.addEventListener("alert", (e) => onAlert(JSON.parse(e.data)));
    ee.events = es;
  }
  async function start() {
    showStatus(await api("GET", "/api/status"));
    ee.seconds = (await api("GET", "/api/seconds")).slice(-HISTORY_S);
    makeLive();
    drawLive();
    await loadHistory();
    connect();
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        live.setSize({ width: chartWidth($("live")), height: 220 });
        if (timeline) timeline.setSize({ width: chartWidth($("timeline")), height: 160 });
      }, 150);
    });
  }
  start().catch((e) => say("detect-msg", `cannot reach the device: ${e.message}`, true));
})();
