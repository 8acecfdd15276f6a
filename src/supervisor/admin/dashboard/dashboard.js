// cutover's dashboard: polls api/status every second and redraws the apps; asks api/fleet once,
// then every 10 s while a Serf agent answers. Every node is built with createElement,
// textContent and setAttribute (never markup from data), so no name, phase or failure an app or
// a manifest carries can run or change the page.
"use strict";

const POLL_MS = 1000;
const FLEET_MS = 10000;
const NO_FLEET_MS = 60000;
const SVG_NS = "http://www.w3.org/2000/svg";

// One element: attrs are attributes (values as text), children are nodes or text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// A CSS class name from a word the supervisor sent ("crash-looping" → "health-crash-looping").
function cls(prefix, word) {
  return prefix + String(word || "").toLowerCase().replace(/[^a-z0-9-]/g, "");
}

function table(headers, rows, empty) {
  if (rows.length === 0) return el("p", { class: "empty" }, empty);
  const head = el("tr", null, ...headers.map(([text, num]) => el("th", { class: num ? "num" : null }, text)));
  return el("table", null, el("thead", null, head), el("tbody", null, ...rows));
}

function cell(text, cssClass) {
  return el("td", { class: cssClass || null }, text === null || text === undefined ? "–" : text);
}

function num(value) {
  return cell(value, "num");
}

function millis(us) {
  return (us / 1000).toFixed(1);
}

function when(rfc3339) {
  if (!rfc3339) return "–";
  const date = new Date(rfc3339);
  return isNaN(date) ? rfc3339 : date.toLocaleString();
}

// ---- the apps ----

function instancesTable(app) {
  const rows = app.instances.map((i) =>
    el("tr", { "data-instance": i.id },
      cell(i.id, "mono"), cell(i.version),
      cell(i.state, cls("health-", i.state)),
      cell(i.routed ? "yes" : "no"), num(i.restarts), num(i.requests), num(i.errors_5xx),
      num(i.in_flight), num(millis(i.p99_us)), cell(i.last_failure)));
  return table(
    [["instance"], ["version"], ["health"], ["routed"], ["restarts", 1], ["requests", 1],
      ["5xx", 1], ["in flight", 1], ["p99 ms", 1], ["last failure"]],
    rows, "no instances");
}

function routeLine(app) {
  const routed = app.instances.filter((i) => i.routed).map((i) => i.id);
  return el("p", { class: "routes" }, "route ", el("code", null, app.listen), " → ",
    routed.length ? routed.join(", ") : "no instance");
}

function releasesTable(app) {
  const rows = (app.releases || []).slice().reverse().map((r) =>
    el("tr", { "data-version": r.version },
      cell(r.version, "mono"), cell(r.state, cls("release-", r.state)),
      cell(when(r.deployed_at)), cell(r.reason)));
  return table([["version"], ["state"], ["went live"], ["why bad"]], rows, "no releases");
}

function rolloutsTable(app) {
  const rows = app.recent_rollouts.slice().reverse().map((r) =>
    el("tr", { "data-version": r.version, "data-kind": r.kind },
      cell(when(r.ended_at)), cell(r.kind), cell(r.version, "mono"), cell(r.previous),
      cell(r.succeeded ? "live" : "failed", r.succeeded ? "outcome outcome-ok" : "outcome outcome-failed"),
      cell(r.reason)));
  return table([["ended"], ["what"], ["version"], ["from"], ["outcome"], ["why"]], rows,
    "no rollout since the app was first deployed here");
}

// ---- the canary chart ----

// One side's value at a sample, or null when there is none yet (a p99 before warm-up).
const SERIES = {
  errors: { title: "error rate", unit: "%", floor: 1, value: (side) => parseFloat(side.error_rate) },
  p99: { title: "p99 latency", unit: "ms", floor: 1, value: (side) => (side.p99_us === null ? null : side.p99_us / 1000) },
};

function chart(samples, series) {
  const W = 460, H = 190, L = 46, R = 12, T = 24, B = 26;
  const t0 = samples.length ? samples[0].at_ms : 0;
  const span = Math.max(samples.length ? samples[samples.length - 1].at_ms - t0 : 0, 1000);
  let top = series.floor;
  for (const s of samples) {
    for (const side of [s.stable, s.canary]) {
      const v = series.value(side);
      if (v !== null && isFinite(v)) top = Math.max(top, v * 1.15);
    }
  }
  const x = (at) => L + ((at - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  root.append(svg("text", { class: "title", x: L, y: 15 }, `${series.title} (${series.unit})`));
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v < 10 ? v.toFixed(1) : v.toFixed(0)));
  }
  root.append(svg("text", { x: L, y: H - 8 }, "0 s"));
  root.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${Math.round(span / 1000)} s`));
  // A dashed line where each step began, labelled with its share.
  let step = null;
  for (const s of samples) {
    if (s.step !== step) {
      step = s.step;
      root.append(svg("line", { class: "step", x1: x(s.at_ms), x2: x(s.at_ms), y1: T, y2: H - B }));
      root.append(svg("text", { x: x(s.at_ms) + 3, y: T + 10 }, s.share));
    }
  }
  // Each side: one line per step (a step's figures start afresh), and a dot per reading.
  let points = 0;
  for (const side of ["stable", "canary"]) {
    const lines = new Map();
    for (const s of samples) {
      const v = series.value(s[side]);
      if (v === null || !isFinite(v)) continue;
      if (!lines.has(s.step)) lines.set(s.step, []);
      lines.get(s.step).push([x(s.at_ms), y(v)]);
    }
    for (const line of lines.values()) {
      points += line.length;
      root.append(svg("polyline", {
        class: `side-${side}`,
        points: line.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "),
      }));
      if (line.length <= 60) {
        for (const [px, py] of line) root.append(svg("circle", { class: `side-${side}`, cx: px, cy: py, r: 2 }));
      }
    }
  }
  root.setAttribute("data-points", String(points));
  return root;
}

function canaryPanel(canary) {
  const last = canary.samples.length ? canary.samples[canary.samples.length - 1] : null;
  const figures = (side) => last
    ? `${last[side].error_rate} errors over ${last[side].requests} requests, p99 ${last[side].p99_us === null ? "not yet" : millis(last[side].p99_us) + " ms"}`
    : "no reading yet";
  return el("div", { class: "canary", "data-running": canary.running ? "yes" : "no" },
    el("div", { class: "canary-head" },
      el("span", { class: "canary-share" }, canary.share),
      el("span", null, "of new clients to ", el("code", { class: "canary-version" }, canary.version),
        " — step ", el("span", { class: "canary-step" }, `${canary.step}/${canary.steps}`)),
      el("span", { class: "muted" }, canary.running ? "running" : "ended")),
    el("div", { class: "legend" },
      el("span", null, el("span", { class: "swatch swatch-stable" }), "stable: ", figures("stable")),
      el("span", null, el("span", { class: "swatch swatch-canary" }), "canary: ", figures("canary"))),
    el("div", { class: "charts" }, chart(canary.samples, SERIES.errors), chart(canary.samples, SERIES.p99)));
}

function appCard(app) {
  return el("section", { class: "card app", "data-app": app.name },
    el("div", { class: "app-head" },
      el("h2", null, app.name),
      el("span", null, "live ", el("span", { class: "live-version" }, app.live_version || "none")),
      el("span", { class: "phase" }, app.phase)),
    routeLine(app),
    el("h3", null, "Instances"), instancesTable(app),
    app.canary ? el("h3", null, app.canary.running ? "Canary" : "Last canary") : null,
    app.canary ? canaryPanel(app.canary) : null,
    el("h3", null, "Last rollouts"), rolloutsTable(app),
    el("h3", null, "Releases"), releasesTable(app));
}

function render(data) {
  document.getElementById("supervisor").textContent = data.supervisor || "";
  const apps = document.getElementById("apps");
  if (data.error) {
    apps.replaceChildren(el("p", { class: "card empty" }, `the supervisor could not answer: ${data.error}`));
  } else if (data.apps.length === 0) {
    apps.replaceChildren(el("p", { class: "card empty" }, "no apps yet: deploy one with a manifest that has an app: section"));
  } else {
    apps.replaceChildren(...data.apps.map(appCard));
  }
}

function setState(kind, text) {
  const state = document.getElementById("state");
  state.className = `state state-${kind}`;
  state.textContent = text;
}

async function poll() {
  try {
    const answer = await fetch("api/status", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    render(await answer.json());
    setState("live", `live · ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    setState("down", `cannot reach the supervisor (${e.message}); retrying`);
  }
  setTimeout(poll, POLL_MS);
}

// ---- the fleet ----

async function pollFleet() {
  let next = NO_FLEET_MS;
  const section = document.getElementById("fleet");
  try {
    const answer = await fetch("api/fleet", { cache: "no-store" });
    const fleet = await answer.json();
    if (fleet.serf) {
      const rows = fleet.rows.map((r) =>
        el("tr", { "data-node": r.node },
          cell(r.node, "mono"), cell(r.status), cell(r.app), cell(r.version), cell(r.health), cell(r.phase)));
      document.getElementById("fleet-table").replaceChildren(
        table([["node"], ["status"], ["app"], ["version"], ["healthy"], ["phase"]], rows, "no members"));
      document.getElementById("fleet-note").textContent = `from Serf, ${new Date().toLocaleTimeString()}`;
      section.hidden = false;
      next = FLEET_MS;
    } else {
      section.hidden = true;
    }
  } catch (e) {
    section.hidden = true;
  }
  setTimeout(pollFleet, next);
}

poll();
pollFleet();
