// Pilotlight console: polls GET /ui/api/state at most once a second and
// redraws only the parts whose data changed. No dependencies, no build.
"use strict";

(function () {
  const POLL_MS = 1000;
  const KEY = "pilotlight-admin-key";
  const $ = (id) => document.getElementById(id);
  const cache = new Map(); // element id -> JSON it was drawn from
  let lastSeq = 0;

  const LABELS = {
    request_arrival: "request arrival",
    exec: "exec",
    specialise_start: "specialise",
    bind: "bind",
    listen: "listen",
    first_accept: "first accept",
    sessions_warm: "sessions warm",
    ready: "ready",
    accept: "accept",
    first_write: "first response",
    first_response: "first response",
  };
  const label = (n) => LABELS[n] || n;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function fmtMS(v) {
    if (v == null) return "–";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 100) return v.toFixed(0) + " ms";
    if (v >= 10) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  }
  function fmtRate(v) {
    if (v == null) return "–";
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }
  function ago(iso) {
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return s.toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function clock(iso) {
    return new Date(iso).toLocaleTimeString();
  }

  // draw replaces el's content only when its data changed.
  function draw(el, data, render) {
    const json = JSON.stringify(data);
    if (cache.get(el.id) === json) return;
    cache.set(el.id, json);
    el.innerHTML = render(data);
  }

  // ---- charts ----
  function line(values, points, max, w, h) {
    const dx = w / Math.max(1, points - 1);
    const off = points - values.length;
    let d = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      const x = ((off + i) * dx).toFixed(1);
      const y = (h - 2 - (v / max) * (h - 6)).toFixed(1);
      const next = values[i + 1];
      // A point with no neighbour is drawn as a dot (a round cap on a tiny segment).
      d += (pen ? "L" : "M") + x + " " + y + " " + (!pen && next == null ? "l0.01 0 " : "");
      pen = true;
    });
    return d;
  }
  function niceMax(vals) {
    let m = 0;
    for (const v of vals) if (v != null && v > m) m = v;
    if (m <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(m)));
    for (const k of [1, 2, 5, 10]) if (m <= k * p) return k * p;
    return 10 * p;
  }
  function chart(series, points, kind) {
    const W = 240, H = 48;
    if (kind === "rate") {
      const vals = series.rps || [];
      const max = niceMax(vals);
      const cur = vals.length ? vals[vals.length - 1] : null;
      return `<div class="chart" data-chart="rate"><div class="legend"><span class="k-rate">req/s ${fmtRate(cur)}</span><span>max ${fmtRate(max)}</span></div>` +
        `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="request rate"><path d="${line(vals, points, max, W, H)}" fill="none" stroke="#2f855a" stroke-width="1.5" stroke-linecap="round" vector-effect="non-scaling-stroke"/></svg></div>`;
    }
    const p50 = series.p50_ms || [], p99 = series.p99_ms || [];
    const max = niceMax(p99.concat(p50));
    const last = (a) => { for (let i = a.length - 1; i >= 0; i--) if (a[i] != null) return a[i]; return null; };
    return `<div class="chart" data-chart="latency"><div class="legend"><span class="k-p50">p50 ${fmtMS(last(p50))}</span><span class="k-p99">p99 ${fmtMS(last(p99))}</span><span>max ${fmtMS(max)}</span></div>` +
      `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="latency p50 and p99">` +
      `<path d="${line(p99, points, max, W, H)}" fill="none" stroke="#c05621" stroke-width="1.5" stroke-linecap="round" vector-effect="non-scaling-stroke"/>` +
      `<path d="${line(p50, points, max, W, H)}" fill="none" stroke="#2b6cb0" stroke-width="1.5" stroke-linecap="round" vector-effect="non-scaling-stroke"/></svg></div>`;
  }

  // ---- cold-start waterfall ----
  const BAR_COLORS = ["#805ad5", "#3182ce", "#38a169", "#d69e2e", "#dd6b20", "#e53e3e", "#319795", "#718096"];
  function barLabel(cs, b) {
    // An exec'd runtime listens first, then creates and warms its sessions; ready says they are warm.
    if (cs.origin === "engine" && b.from === "listen" && b.to === "ready") return "listen → sessions warm, ready";
    return label(b.from) + " → " + label(b.to);
  }
  function waterfall(cs) {
    const W = 520, LABEL = 170, DUR = 64, ROW = 15;
    const span = W - LABEL - DUR;
    const total = cs.total_ms > 0 ? cs.total_ms : 1;
    const origin = cs.origin === "kernel" ? "kernel phases (eBPF)" : "engine marks";
    let rows = "";
    cs.bars.forEach((b, i) => {
      const x = LABEL + (b.start_ms / total) * span;
      const w = Math.max(1, (b.ms / total) * span);
      const y = i * ROW;
      rows += `<g class="bar" data-from="${esc(b.from)}" data-to="${esc(b.to)}">` +
        `<text x="0" y="${y + 11}">${esc(barLabel(cs, b))}</text>` +
        `<rect x="${x.toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${ROW - 5}" rx="2" fill="${BAR_COLORS[i % BAR_COLORS.length]}"/>` +
        `<text class="d" x="${Math.min(x + w + 4, W - DUR + 4).toFixed(1)}" y="${y + 11}">${fmtMS(b.ms)}</text></g>`;
    });
    const h = Math.max(1, cs.bars.length) * ROW + 2;
    const pending = cs.pending ? " · waiting for the first response" : "";
    return `<div class="wf" data-pid="${cs.pid}" data-origin="${esc(cs.origin)}">` +
      `<div class="cap">${esc(cs.source === "pool" ? "warm-pool process specialised" : cs.source === "shared" ? "loaded into a running shared process" : "new process (exec)")} · pid ${cs.pid} · ` +
      `<b>${fmtMS(cs.total_ms)}</b> ${cs.autoscaled ? "start to ready, asked for by the autoscaler (no request waited)" : "arrival to " + (cs.pending ? "ready" : "first response")} · ${esc(origin)}${cs.at ? " · at " + esc(clock(cs.at)) : ""}${pending}</div>` +
      `<svg viewBox="0 0 ${W} ${h}" height="${h}" preserveAspectRatio="xMinYMin meet" role="img" aria-label="cold start waterfall">${rows}</svg></div>`;
  }

  // ---- functions ----
  function weightBar(w) {
    return `<span class="weight"><svg viewBox="0 0 100 10" preserveAspectRatio="none"><rect x="0" y="0" width="100" height="10" rx="2" fill="#e2e8f0"/>` +
      `<rect x="0" y="0" width="${w}" height="10" rx="2" fill="#2b6cb0"/></svg><b>${w}%</b></span>`;
  }
  function revision(r, view) {
    let inst;
    if (!r.local) {
      inst = `<span class="muted">instances are Knative's (kubectl get pods); weights from the flag</span>`;
    } else if (r.starting + r.ready + r.draining === 0) {
      inst = `<span class="zero">at zero — no instance; the next request starts one (cold start)</span>` +
        (r.queued ? ` <span class="pill starting">${r.queued} queued</span>` : "");
    } else {
      const pids = (state) => esc(r.instances.filter((i) => i.state === state).map((i) => `pid ${i.pid}: ${i.inflight} in flight (${i.source})`).join("\n") || "none");
      inst = `<span class="pill ready" title="${pids("ready")}">ready ${r.ready}</span><span class="pill starting" title="${pids("starting")}">starting ${r.starting}</span>` +
        `<span class="pill draining" title="${pids("draining")}">draining ${r.draining}</span><span class="muted">desired ${r.desired} · queued ${r.queued}` +
        `${r.panic ? " · <b>panic mode</b>" : ""}${r.reason ? ` · <span title="${esc(r.reason)}">autoscaler: ${esc(r.reason.split(":")[0])}</span>` : ""}</span>`;
    }
    const colds = r.cold_starts.length
      ? r.cold_starts.map(waterfall).join("")
      : `<div class="none">no cold start since the console started</div>`;
    return `<div class="rev" data-revision="${esc(r.name)}">` +
      `<div class="rev-head"><b class="mono">${esc(r.name)}</b>${r.tag ? `<span class="pill">${esc(r.tag)}</span>` : ""}${weightBar(r.weight)}</div>` +
      `<div class="inst" data-ready="${r.ready}" data-starting="${r.starting}" data-draining="${r.draining}">${inst}${loadsLine(r)}</div>` +
      `<div class="charts">${chart(r.series, view.points, "rate")}${chart(r.series, view.points, "latency")}</div>` +
      `<div class="colds">${colds}</div></div>`;
  }
  function functionCard(d) {
    const f = d.f;
    return `<header><h3>${esc(f.name)}</h3><span class="pill">${esc(f.handler)}</span>` +
      `<span class="muted">flag <code>${esc(f.flag)}</code></span></header>` +
      f.revisions.map((r) => revision(r, d)).join("");
  }
  function functions(v) {
    const box = $("functions");
    const points = v.series_points;
    $("fn-count").textContent = `(${v.functions.length}) · charts: last ${Math.round(points * v.step_seconds / 60)} min, ${v.step_seconds} s steps`;
    if (!v.functions.length) {
      draw(box, [], () => `<div class="notice warn" id="empty">No functions are loaded. Put a directory with a function.yaml under <code>--functions</code> and restart serve.</div>`);
      return;
    }
    const ids = v.functions.map((f) => "fn-" + f.name);
    const have = Array.from(box.children).map((c) => c.id);
    if (ids.join("\n") !== have.join("\n")) {
      box.innerHTML = "";
      for (const f of v.functions) {
        const el = document.createElement("article");
        el.className = "card fn";
        el.id = "fn-" + f.name;
        el.dataset.function = f.name;
        box.appendChild(el);
      }
      cache.delete(box.id);
      for (const id of ids) cache.delete(id);
    }
    v.functions.forEach((f) => draw($("fn-" + f.name), { f, points }, functionCard));
  }

  // ---- rollouts ----
  const STATE_PILL = { running: "run", promoted: "good", rolled_back: "bad", failed: "bad", aborted: "" };
  function rolloutCard(r) {
    const s = r.spec;
    const ended = r.state !== "running";
    const steps = s.steps.map((w, i) => {
      let cls = "step";
      if (i < r.step || (ended && r.state === "promoted")) cls += " done";
      else if (i === r.step) cls += ended ? (r.state === "promoted" ? " done" : " failed") : " current";
      return `<span class="${cls}" data-weight="${w}">${w}%</span>`;
    }).join("");
    const rows = (r.decisions || []).slice(-8).map((d) =>
      `<tr data-verdict="${esc(d.verdict)}"><td>${esc(clock(d.at))}</td><td>${d.weight}%</td><td>${d.requests}</td><td>${d.errors}</td>` +
      `<td>${(d.error_rate * 100).toFixed(2)}%</td><td>${esc(d.p99)}</td><td><b>${esc(d.verdict)}</b></td><td class="reason">${esc(d.reason)}</td></tr>`).join("");
    const last = (r.decisions || []).slice(-1)[0];
    return `<article class="card rollout" data-function="${esc(s.function)}" data-state="${esc(r.state)}">` +
      `<header><h3>${esc(s.function)}: <span class="mono">${esc(r.from)}</span> → <span class="mono">${esc(s.to)}</span></h3>` +
      `<span class="pill ${STATE_PILL[r.state] || ""}">${esc(r.state.replace("_", " "))}</span>` +
      `<span class="muted">canary ${r.weight}% · started ${esc(clock(r.started))}</span></header>` +
      `<div class="steps">${steps}</div>` +
      `<div class="muted">every ${esc(s.interval)} · pass if errors ≤ ${(s.max_error_rate * 100).toFixed(1)}%, p99 ≤ ${esc(s.max_p99)}, ≥ ${s.min_requests} requests</div>` +
      (ended && last ? `<div class="${r.state === "promoted" ? "" : "notice bad"}">${esc(last.verdict)}: ${esc(last.reason)}</div>` : "") +
      (rows ? `<table><thead><tr><th>at</th><th>weight</th><th>requests</th><th>errors</th><th>error rate</th><th>p99</th><th>verdict</th><th>why</th></tr></thead><tbody>${rows}</tbody></table>`
        : `<div class="none">no analysis yet: the first comes after one interval</div>`) +
      `</article>`;
  }
  function rollouts(v) {
    let html;
    if (!v.rollouts_on) {
      html = `<div class="none">The rollout controller is off: serve runs without a flag file (<code>--flags</code>).</div>`;
    } else {
      html = v.rollouts.length
        ? `<div class="rollouts" id="running">${v.rollouts.map(rolloutCard).join("")}</div>`
        : `<div class="none">No rollout in flight. Start one with <code>pilotlight rollout start FUNCTION --to REVISION</code>.</div>`;
      if (v.finished.length) {
        html += `<h2>Finished <span class="muted">(latest first)</span></h2><div class="rollouts" id="finished">${v.finished.map(rolloutCard).join("")}</div>`;
      }
    }
    const el = $("rollouts");
    const json = JSON.stringify([v.rollouts_on, v.rollouts, v.finished]);
    if (cache.get("rollouts") !== json) { cache.set("rollouts", json); el.innerHTML = html; }
  }

  // loadsLine is a shared revision's loads and unloads by reason.
  function loadsLine(r) {
    const fmt = (m) => Object.entries(m || {}).map(([k, n]) => `${esc(k)} ${n}`).join(", ");
    if (!r.loads && !r.unloads) return "";
    return `<div class="muted loads" data-unloads="${esc(fmt(r.unloads))}">shared process: loads ${fmt(r.loads) || "none"} · unloads ${fmt(r.unloads) || "none"}</div>`;
  }

  // ---- runtime processes: which holds which revisions ----
  function mib(b) { return (b / 1048576).toFixed(1) + " MiB"; }
  function processes(v) {
    $("processes-section").hidden = v.backend !== "local";
    draw($("processes"), v.processes, (ps) => ps.length ? `<table class="procs"><tr><th>pid</th><th>isolation</th><th>state</th><th>memory</th><th>revisions (least recently used first)</th></tr>` +
      ps.map((p) => {
        const revs = [...p.revisions].sort((a, b) => (a.last_active || "").localeCompare(b.last_active || ""));
        const budget = (p.isolation === "shared" ? ` <span class="muted">· sessions ${mib(p.charged_bytes || 0)} of ${mib(p.budget_bytes)}</span>` : "") +
          ` <span class="muted">· device ${p.device_bytes ? mib(p.device_bytes) : "0 (CPU)"}</span>`;
        return `<tr data-pid="${p.pid}" data-isolation="${esc(p.isolation)}"><td class="mono">${p.pid || "…"}</td><td>${esc(p.isolation)}</td><td>${esc(p.state)}</td><td>RSS ${mib(p.rss_bytes)}${budget}</td><td>` +
          (revs.length ? revs.map((r) => `<span class="rev mono" data-rev="${esc(r.revision)}" title="${esc(r.provider_reason || "")}">${esc(r.revision)} <span class="muted">${esc(r.state)}${r.inflight ? ", " + r.inflight + " in flight" : ""}${r.host_bytes ? ", " + mib(r.host_bytes) : ""}${r.provider ? ", " + esc(r.provider) + (r.device_bytes ? " " + mib(r.device_bytes) + " on the device" : "") : ""}${r.last_active ? ", " + esc(ago(r.last_active)) : ""}</span></span>`).join(" · ") : `<span class="muted">none</span>`) + `</td></tr>`;
      }).join("") + `</table>` : `<p class="muted">No runtime process is running: every revision is at zero.</p>`);
  }

  // ---- header and notices ----
  function summary(v) {
    let ready = 0, starting = 0, draining = 0;
    for (const f of v.functions) for (const r of f.revisions) { ready += r.ready; starting += r.starting; draining += r.draining; }
    const flags = v.flags
      ? `flags <b class="mono">${esc(v.flags.version.slice(0, 12))}</b> · ${v.flags.last_reload_at ? `last reload <b id="reload" data-result="${esc(v.flags.last_reload)}">${esc(v.flags.last_reload)}</b> ${esc(ago(v.flags.last_reload_at))}` : `<span id="reload" data-result="loaded">loaded at start, not changed since</span>`}`
      : `no flag file`;
    $("summary").innerHTML =
      `<span>backend <b>${esc(v.backend)}</b></span><span><b>${v.functions.length}</b> functions</span>` +
      (v.backend === "local" ? `<span>instances: <b>${ready}</b> ready, <b>${starting}</b> starting, <b>${draining}</b> draining</span>` +
        `<span id="pool" data-idle="${v.pool.length}">warm pool: <b>${v.pool.length}</b> idle${v.pool.length ? " (pid " + v.pool.map((p) => p.pid).join(", ") + ")" : ""}</span>` : "") +
      `<span id="probes" data-on="${v.probes}">eBPF probes <b>${v.probes ? "on" : "off"}</b></span><span>${flags}</span>`;
    const notes = [];
    if (!v.probes) notes.push(["", "eBPF probes are off: cold-start waterfalls show the engine's own marks. Run serve with <code>--ebpf</code> (root, this kernel) for kernel phases (exec, listen, accept, first write)."]);
    if (v.backend === "local" && !v.pool.length) notes.push(["warn", "The warm pool is empty: the next cold start execs a new process (slower) until it refills."]);
    if (!v.flags) notes.push(["", "No flag file: every request goes to each function's stable revision."]);
    else if (v.flags.error) notes.push(["bad", "The flag file on disk is rejected: " + esc(v.flags.error)]);
    else if (v.flags.last_reload !== "success") notes.push(["bad", "The latest flag reload was <b>" + esc(v.flags.last_reload) + "</b>; the last good flags stay in force."]);
    draw($("notices"), notes, (ns) => ns.map(([cls, html]) => `<div class="notice ${cls}">${html}</div>`).join(""));
  }

  // ---- polling ----
  function setStatus(text, stale) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("stale", !!stale);
  }
  function showLogin(msg) {
    $("main").hidden = true;
    $("login").hidden = false;
    if (msg) $("login-msg").textContent = msg;
    setStatus("needs an admin key", true);
  }
  async function poll() {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    try {
      const resp = await fetch("api/state", { headers, cache: "no-store" });
      if (resp.status === 401 || resp.status === 403) {
        const body = await resp.json().catch(() => ({}));
        sessionStorage.removeItem(KEY);
        showLogin((body.error || "This console needs an admin API key") + ".");
        return; // wait for the form
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const v = await resp.json();
      $("login").hidden = true;
      $("main").hidden = false;
      if (v.seq !== lastSeq) {
        lastSeq = v.seq;
        summary(v);
        rollouts(v);
        functions(v);
        processes(v);
        document.body.dataset.seq = String(v.seq);
      }
      setStatus("live · " + clock(v.generated) + " · #" + v.seq);
    } catch (e) {
      setStatus("disconnected (" + e.message + "); retrying every second", true);
    }
    setTimeout(poll, POLL_MS);
  }
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (!k) return;
    sessionStorage.setItem(KEY, k);
    $("key").value = "";
    poll();
  });
  poll();
})();
