// meshgate dashboard: polls the admin server's /api/* documents and draws
// them. Plain browser JavaScript, no build step, no library.
//
// Rates and latency quantiles are computed here, from the difference between
// two /api/stats polls (the server sends cumulative counters and histogram
// buckets, as /metrics does). Every value from the server is put into the
// page as text, never as HTML: names, hosts and error details can come from
// clients on the network.
"use strict";

(() => {
  const POLL_MS = 1500; // how often the three documents are fetched
  const FETCH_TIMEOUT_MS = 5000; // a hung admin server counts as gone
  const WINDOW_S = 180; // the charts' longest time span
  const MIN_SPAN_S = 30; // a fresh page still draws lines, not a dot at the edge
  const PALETTE = {
    blue: "#3b82f6",
    green: "#16a34a",
    amber: "#d97706",
    red: "#dc2626",
    violet: "#7c3aed",
    grey: "#6b7280",
  };
  const CODE_CLASSES = [
    ["2xx", PALETTE.green],
    ["3xx", PALETTE.blue],
    ["4xx", PALETTE.amber],
    ["5xx", PALETTE.red],
  ];

  const history = new Map(); // series key -> [[time, value | null], ...]
  let previous = null; // the last /api/stats document
  let lastGood = 0; // Date.now() of the last complete poll
  let latest = null; // {overview, stats, errors, rates} of the last poll
  let pollTimer = null; // the next poll, cancelled when a token is given

  // -- DOM helpers ----------------------------------------------------------

  const byId = (id) => document.getElementById(id);

  // el("td", {class: "num", data: {field: "total"}}, "12"): children are
  // nodes or strings (always inserted as text).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "data") {
        for (const [name, v] of Object.entries(value)) node.dataset[name] = String(v);
      } else if (key === "title") {
        node.title = String(value);
      } else {
        node.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const span = (cls, ...children) => el("span", { class: cls }, ...children);

  function show(id, visible) {
    byId(id).hidden = !visible;
  }

  function fill(parent, nodes) {
    parent.replaceChildren(...nodes);
  }

  // -- formatting -------------------------------------------------------------

  function fmtNumber(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    if (n === 0) return "0";
    const abs = Math.abs(n);
    if (abs >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (abs >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (abs >= 1e4) return (n / 1e3).toFixed(1) + "k";
    if (Number.isInteger(n)) return String(n);
    if (abs >= 100) return n.toFixed(0);
    if (abs >= 10) return n.toFixed(1);
    return n.toFixed(2);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const digits = unit > 0 || (value < 10 && !Number.isInteger(value)) ? 1 : 0;
    return value.toFixed(digits) + " " + units[unit];
  }

  const fmtRate = (n) => (n === null || n === undefined ? "–" : fmtNumber(n) + "/s");
  const fmtByteRate = (n) => (n === null || n === undefined ? "–" : fmtBytes(n) + "/s");

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }

  function fmtAge(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function fmtClock(epoch) {
    if (!epoch) return "–";
    return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
  }

  function hostport(address, port) {
    return String(address).includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
  }

  // -- rates and quantiles ----------------------------------------------------

  // Per-second rate of a counter between two polls; null after a reset
  // (meshgate restarted) or without a previous poll.
  function rate(now, before, seconds) {
    if (before === undefined || before === null || seconds <= 0) return null;
    const delta = now - before;
    return delta >= 0 ? delta / seconds : null;
  }

  // The q-quantile of the observations made between two polls, from
  // cumulative histogram buckets (`le` finite upper bounds, `count` all):
  // linear interpolation inside the bucket, as Prometheus'
  // histogram_quantile(); in the +Inf bucket, the highest finite bound.
  function quantile(q, now, before) {
    if (!before || before.le.length !== now.le.length) return null;
    const total = now.count - before.count;
    if (!(total > 0)) return null;
    const rank = q * total;
    let lowerBound = 0;
    let lowerCount = 0;
    for (let i = 0; i < now.le.length; i += 1) {
      const cumulative = now.cumulative[i] - before.cumulative[i];
      if (cumulative >= rank) {
        const inBucket = cumulative - lowerCount;
        if (inBucket <= 0) return now.le[i];
        return lowerBound + ((now.le[i] - lowerBound) * (rank - lowerCount)) / inBucket;
      }
      lowerBound = now.le[i];
      lowerCount = cumulative;
    }
    return now.le.length ? now.le[now.le.length - 1] : null;
  }

  const routeKey = (listener, route) => listener + "\u0000" + route;

  // Rates between the previous /api/stats and this one, by listener and route.
  function computeRates(stats, before) {
    const seconds = before ? stats.time - before.time : 0;
    const old = new Map((before ? before.listeners : []).map((l) => [l.listener, l]));
    const listeners = new Map();
    for (const l of stats.listeners) {
      const p = old.get(l.listener);
      const get = (field) => rate(l[field], p && p[field], seconds);
      listeners.set(l.listener, {
        active: l.connections_active + l.udp_flows_active,
        connections: p ? sumRates(get("connections_total"), get("udp_flows_total")) : null,
        bytesIn: get("bytes_in_total"),
        bytesOut: get("bytes_out_total"),
        requests: get("requests_total"),
        errors: get("errors_total"),
      });
    }
    const oldRoutes = new Map(
      (before ? before.routes : []).map((r) => [routeKey(r.listener, r.route), r]),
    );
    const routes = new Map();
    for (const r of stats.routes) {
      const p = oldRoutes.get(routeKey(r.listener, r.route));
      const classes = {};
      for (const [name] of CODE_CLASSES) {
        const digit = name[0];
        const sum = (doc) =>
          Object.entries(doc.codes)
            .filter(([code]) => code[0] === digit)
            .reduce((acc, [, n]) => acc + n, 0);
        classes[name] = p ? rate(sum(r), sum(p), seconds) : null;
      }
      routes.set(routeKey(r.listener, r.route), {
        requests: p ? rate(r.requests_total, p.requests_total, seconds) : null,
        classes,
        p50: p ? quantile(0.5, r.latency, p.latency) : null,
        p99: p ? quantile(0.99, r.latency, p.latency) : null,
      });
    }
    return { listeners, routes };
  }

  function sumRates(a, b) {
    if (a === null && b === null) return null;
    return (a || 0) + (b || 0);
  }

  function record(key, time, value) {
    let points = history.get(key);
    if (!points) {
      points = [];
      history.set(key, points);
    }
    points.push([time, value === undefined ? null : value]);
    while (points.length && points[0][0] < time - WINDOW_S) points.shift();
  }

  function remember(stats, rates) {
    const t = stats.time;
    for (const [name, r] of rates.listeners) {
      for (const field of ["active", "connections", "bytesIn", "bytesOut", "requests", "errors"]) {
        record(`l:${name}:${field}`, t, r[field]);
      }
    }
    for (const [key, r] of rates.routes) {
      for (const [name] of CODE_CLASSES) record(`r:${key}:${name}`, t, r.classes[name]);
      record(`r:${key}:p50`, t, r.p50);
      record(`r:${key}:p99`, t, r.p99);
    }
  }

  // -- charts (canvas, drawn by hand) -------------------------------------------

  // A chart: a title, a legend with the current values, and a canvas.
  // `base` 1024 makes byte axes end on round KiB/MiB values.
  function chart(title, lines, format, base = 10) {
    const legend = lines.map((line) => {
      const swatch = el("i", { class: "swatch" });
      swatch.style.background = line.color; // CSSOM: allowed by the page's CSP
      const points = history.get(line.key) || [];
      const last = points.length ? points[points.length - 1][1] : null;
      return span("key", swatch, line.label + " ", el("b", {}, format(last)));
    });
    const canvas = el("canvas", { class: "chart" });
    canvas.chartLines = lines;
    canvas.chartFormat = format;
    canvas.chartBase = base;
    return el(
      "div",
      { class: "chart-box", data: { chart: title } },
      el("div", { class: "chart-title" }, title),
      el("div", { class: "legend" }, legend),
      canvas,
    );
  }

  function drawChart(canvas) {
    const lines = canvas.chartLines || [];
    const format = canvas.chartFormat || fmtNumber;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    const style = getComputedStyle(canvas);
    const grid = style.getPropertyValue("--grid").trim() || "#e5e7eb";
    const ink = style.getPropertyValue("--muted").trim() || "#6b7280";
    const paper = style.getPropertyValue("--panel").trim() || "#ffffff";
    const now = latest ? latest.stats.time : Date.now() / 1000;
    let max = 0;
    let oldest = now;
    for (const line of lines) {
      for (const [t, v] of history.get(line.key) || []) {
        if (v !== null && v > max) max = v;
        if (t < oldest) oldest = t;
      }
    }
    // 5% headroom: a line at the maximum stays off the top edge.
    max = niceCeiling(max * 1.05, canvas.chartBase || 10);
    // The x axis grows with the history, up to WINDOW_S.
    const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, now - oldest));
    const left = 4;
    const right = width - 4;
    const top = 6;
    const bottom = height - 4;
    const x = (t) => right - ((now - t) / span) * (right - left);
    const y = (v) => bottom - (v / max) * (bottom - top);

    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    const gridLines = [0, 0.5, 1].map((f) => [f, Math.round(y(max * f)) + 0.5]);
    for (const [, gy] of gridLines) {
      ctx.beginPath();
      ctx.moveTo(left, gy);
      ctx.lineTo(right, gy);
      ctx.stroke();
    }
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const line of lines) {
      ctx.strokeStyle = line.color;
      ctx.beginPath();
      let drawing = false;
      for (const [t, v] of history.get(line.key) || []) {
        if (v === null) {
          drawing = false; // a gap: no data for this poll
          continue;
        }
        if (drawing) ctx.lineTo(x(t), y(v));
        else ctx.moveTo(x(t), y(v));
        drawing = true;
      }
      ctx.stroke();
    }
    // Axis values last, on a patch of background, so lines never hide them.
    ctx.font = "10px system-ui, sans-serif";
    for (const [fraction, gy] of gridLines) {
      if (fraction === 0) continue;
      const text = format(max * fraction);
      ctx.fillStyle = paper;
      ctx.fillRect(left, gy + 1, ctx.measureText(text).width + 6, 12);
      ctx.fillStyle = ink;
      ctx.fillText(text, left + 3, gy + 11);
    }
  }

  // A round upper bound for the y axis: 1, 2 or 5 times a power of ten,
  // in units of a power of `base` (1024 for bytes: 20 KiB, not 19.5 KiB).
  function niceCeiling(value, base = 10) {
    if (!(value > 0)) return 1;
    const exponent = Math.max(0, Math.floor(Math.log(value) / Math.log(base)));
    const unit = base === 10 ? 1 : base ** exponent;
    const scaled = value / unit;
    const power = 10 ** Math.floor(Math.log10(scaled));
    for (const step of [1, 2, 5, 10]) if (scaled <= step * power) return step * power * unit;
    return 10 * power * unit;
  }

  function drawAllCharts() {
    for (const canvas of document.querySelectorAll("canvas.chart")) drawChart(canvas);
  }

  // -- sections -------------------------------------------------------------------

  function renderHeader(ov) {
    const facts = [];
    if (ov.kind === "operator") {
      facts.push("operator");
    } else if (ov.config) {
      facts.push(`table v${ov.config.version}`);
      facts.push(ov.config.sources.length ? ov.config.sources.join(", ") : "no sources");
    }
    if (ov.started) facts.push("up " + fmtAge(ov.time - ov.started));
    if (ov.admin) facts.push("admin " + ov.admin);
    byId("summary").textContent = facts.join(" · ");
    const ready = byId("ready");
    ready.textContent = ov.ready.ready ? "ready" : "not ready";
    ready.className = "pill " + (ov.ready.ready ? "ok" : "bad");
    ready.title = ov.ready.reason || "";
  }

  function facts(pairs) {
    return pairs
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]);
  }

  function renderMesh(ov) {
    const mesh = ov.mesh;
    const dns = ov.dns;
    show("mesh", Boolean(mesh || dns));
    if (!mesh && !dns) return;
    const rows = [];
    if (mesh) {
      rows.push(
        ["address", (mesh.addresses || []).join(", ") || "none"],
        ["interface", mesh.interface || "–"],
        ["chosen", mesh.reason],
      );
    }
    if (dns) {
      const names = Object.entries(dns.names || {}).map(([name, addrs]) =>
        el("div", { class: "mono" }, `${name} → ${addrs.join(", ")}`),
      );
      rows.push(
        ["DNS on", dns.listen || "not serving"],
        ["zones", (dns.zones || []).join(", ")],
        ["names", names.length ? names : "none"],
      );
    }
    fill(byId("mesh-facts"), facts(rows));
    const warnings = [];
    if (mesh && mesh.fallback) {
      const text = "Not on the mesh: listening on a fallback address, which peers cannot reach.";
      warnings.push(el("div", { class: "warn" }, text));
    }
    if (dns && dns.error) warnings.push(el("div", { class: "warn" }, "Mesh DNS: ", dns.error));
    fill(byId("mesh-warnings"), warnings);
  }

  function renderConfig(ov) {
    const cfg = ov.config;
    show("config", Boolean(cfg));
    if (!cfg) return;
    const reload = cfg.last_reload || {};
    const result = span("pill " + (reload.result === "ok" ? "ok" : "bad"), reload.result || "none");
    fill(
      byId("config-facts"),
      facts([
        ["table version", String(cfg.version)],
        ["sources", cfg.sources.length ? cfg.sources.join(", ") : "none"],
        ["last reload", [result, " at ", fmtClock(reload.time)]],
      ]),
    );
    const notes = [];
    if (reload.error) {
      // A rejected reload leaves the old table serving; say so, "rejected" alone reads as down.
      const still = reload.result === "rejected" ? `rejected, still serving v${cfg.version}` : "";
      notes.push(el("div", { class: "warn" }, still, el("pre", {}, reload.error)));
    }
    const list = (items) => el("ul", {}, items.map((item) => el("li", {}, item)));
    if (cfg.problems.length) {
      notes.push(el("div", { class: "warn" }, "Skipped objects:", list(cfg.problems)));
    }
    if (cfg.notes.length) notes.push(el("div", { class: "note" }, "Ignored:", list(cfg.notes)));
    fill(byId("config-notes"), notes);
  }

  function renderListeners(ov, rates) {
    show("listeners", ov.listeners.length > 0);
    const rows = ov.listeners.map((l) => {
      const r = rates.listeners.get(l.name) || {};
      const cell = (field, text, cls) => el("td", { class: cls || "num", data: { field } }, text);
      return el(
        "tr",
        { data: { listener: l.name, state: l.state } },
        el("td", {}, l.name),
        el("td", { class: "mono" }, hostport(l.address, l.port)),
        el("td", {}, l.protocol),
        el("td", {}, el("span", { class: "state s-" + l.state, title: l.error || "" }, l.state)),
        cell("active", fmtNumber(l.active)),
        cell("conn-rate", fmtRate(r.connections)),
        cell("req-rate", ["http", "https"].includes(l.protocol) ? fmtRate(r.requests) : "–"),
        cell("in-rate", fmtByteRate(r.bytesIn)),
        cell("out-rate", fmtByteRate(r.bytesOut)),
        cell("total", fmtNumber(l.total)),
        cell("errors", fmtRate(r.errors), r.errors ? "num bad-text" : "num"),
      );
    });
    fill(byId("listener-rows"), rows);
    const failed = ov.listeners.filter((l) => l.error);
    fill(
      byId("listener-errors"),
      failed.map((l) => el("div", { class: "warn" }, `${l.name}: `, l.error)),
    );
  }

  function routeMatch(route) {
    switch (route.kind) {
      case "sni": {
        let names = (route.sni || []).join(", ");
        if (route.default) names = names ? names + " (default)" : "(default: any name)";
        return [span("mono", names), span("tag", route.mode || "passthrough")];
      }
      case "http":
        return [
          span("mono", (route.host || "*") + route.path),
          span("tag", route.path_type),
          route.rewrite_target ? span("tag", "rewrite " + route.rewrite_target) : null,
          route.origin ? span("origin", route.origin) : null,
        ];
      case "default":
        return [span("mono", "*"), span("tag", "default backend")];
      default:
        return [span("muted", "every connection")];
    }
  }

  function endpoints(backend) {
    if (!backend) return span("muted", "unknown backend");
    if (backend.builtin) return span("tag", "built-in " + backend.builtin);
    if (!backend.endpoints.length) return span("state s-failed", "no endpoints");
    return backend.endpoints.map((ep) =>
      el(
        "span",
        {
          // Red too when the active check fails: new connections skip it either way.
          class: "ep s-" + (ep.check === "unhealthy" ? "failed" : ep.state),
          data: { endpoint: ep.address, state: ep.state },
          title:
            `${ep.failures} failures in a row, ${ep.ejections} ejections` +
            (ep.check ? `, health check ${ep.check}` : "") +
            (ep.check === "unhealthy" && ep.check_reason ? ` (${ep.check_reason})` : ""),
        },
        span("mono", ep.address),
        " ",
        el("b", {}, ep.state),
        ep.in_flight ? ` · ${ep.in_flight} in flight` : "",
        ep.check === "unhealthy" ? " · failing its health check" : "",
      ),
    );
  }

  const listenUrl = (l) => `${l.protocol}://${hostport(l.address, l.port)}`;

  function routeRow(listener, route, backends, rates) {
    const r = route.metric_route ? rates.routes.get(routeKey(listener, route.metric_route)) : null;
    const backend = route.backend ? backends.get(route.backend) : null;
    const name = route.backend
      ? [route.backend, " ", span("muted", backend ? backend.balance : "")]
      : span("muted", "redirect only");
    return el(
      "tr",
      { data: { route: route.metric_route || route.kind } },
      el("td", {}, routeMatch(route)),
      el("td", {}, name),
      el("td", { class: "eps" }, route.backend ? endpoints(backend) : "–"),
      el("td", { class: "num" }, r ? fmtRate(r.requests) : "–"),
      el("td", { class: "num" }, r ? fmtSeconds(r.p99) : "–"),
    );
  }

  function renderRoutes(ov, rates) {
    const backends = new Map(ov.backends.map((b) => [b.name, b]));
    const head = ["match", "backend", "endpoints", "req/s", "p99"].map((text, i) =>
      el("th", { class: i > 2 ? "num" : null }, text),
    );
    const blocks = ov.listeners
      .filter((l) => l.routes.length)
      .map((l) =>
        el(
          "div",
          { class: "route-block", data: { listener: l.name } },
          el("h3", {}, l.name, " ", span("muted mono", listenUrl(l))),
          el(
            "table",
            { class: "compact routes" },
            el("thead", {}, el("tr", {}, head.map((th) => th.cloneNode(true)))),
            el("tbody", {}, l.routes.map((route) => routeRow(l.name, route, backends, rates))),
          ),
        ),
      );
    show("routes", blocks.length > 0);
    fill(byId("route-tree"), blocks);
  }

  // Chart cards are keyed and rebuilt each poll; the canvases are redrawn after.
  function renderTraffic(ov, stats) {
    const seen = new Set();
    const cards = [];
    for (const l of ov.listeners) {
      if (seen.has(l.name)) continue; // one card per name (mesh listeners share it)
      seen.add(l.name);
      const key = (field) => `l:${l.name}:${field}`;
      const http = ["http", "https"].includes(l.protocol);
      cards.push(
        el(
          "div",
          { class: "card", data: { listener: l.name } },
          el("h3", {}, l.name, " ", span("muted", l.protocol)),
          el(
            "div",
            { class: "charts" },
            chart("connections", [
              { key: key("active"), label: "open", color: PALETTE.blue },
              { key: key("connections"), label: "new/s", color: PALETTE.violet },
            ], fmtNumber),
            chart("bytes/s", [
              { key: key("bytesIn"), label: "in", color: PALETTE.green },
              { key: key("bytesOut"), label: "out", color: PALETTE.blue },
            ], fmtBytes, 1024),
            chart(http ? "requests/s" : "errors/s", [
              http ? { key: key("requests"), label: "req", color: PALETTE.green } : null,
              { key: key("errors"), label: "errors", color: PALETTE.red },
            ].filter(Boolean), fmtNumber),
          ),
        ),
      );
    }
    show("traffic", cards.length > 0);
    fill(byId("listener-charts"), cards);

    const routeCards = stats.routes.map((r) => {
      const key = (field) => `r:${routeKey(r.listener, r.route)}:${field}`;
      const codes = CODE_CLASSES.map(([name, color]) => ({ key: key(name), label: name, color }));
      return el(
        "div",
        { class: "card", data: { route: r.route } },
        el(
          "h3",
          {},
          span("mono", r.route === "-" ? "(no route)" : r.route),
          " ",
          span("muted", `on ${r.listener} · ${fmtNumber(r.requests_total)} requests`),
        ),
        el(
          "div",
          { class: "charts two" },
          chart("responses/s", codes, fmtNumber),
          chart("latency", [
            { key: key("p50"), label: "p50", color: PALETTE.blue },
            { key: key("p99"), label: "p99", color: PALETTE.amber },
          ], fmtSeconds),
        ),
      );
    });
    show("http", routeCards.length > 0);
    fill(byId("route-charts"), routeCards);
  }

  const WHERE_FIELDS = ["listener", "backend", "service", "route", "file"];
  const SHOWN_FIELDS = new Set(["reason", "error", "problem", ...WHERE_FIELDS]);

  function renderErrors(doc) {
    const items = doc.errors || [];
    byId("errors-count").textContent = items.length
      ? `${doc.seen} since start, last ${items.length} shown`
      : "none since start";
    const rows = items.map((e) => {
      const where = WHERE_FIELDS.filter((f) => e.fields[f])
        .map((f) => String(e.fields[f]))
        .join(" / ");
      const details = Object.entries(e.fields)
        .filter(([k, v]) => !SHOWN_FIELDS.has(k) && v !== null && v !== "")
        .map(([k, v]) => `${k}=${v}`)
        .join(" ");
      return el(
        "tr",
        { class: "lvl-" + e.level, data: { event: e.event } },
        el("td", { class: "mono nowrap" }, fmtClock(e.time)),
        el("td", {}, span("level", e.level)),
        el("td", { class: "nowrap" }, e.event),
        el("td", { class: "mono" }, where || e.logger),
        el("td", { class: "reason" }, e.reason || ""),
        el("td", { class: "details mono", title: details }, details),
      );
    });
    fill(byId("error-rows"), rows);
    byId("errors-table").hidden = rows.length === 0;
  }

  function renderOperator(ov) {
    const op = ov.operator;
    show("operator", Boolean(op));
    if (!op) return;
    fill(
      byId("operator-facts"),
      facts([
        ["namespace", op.namespace],
        ["identity", op.identity],
        ["role", op.leader ? "leader (writes)" : "follower"],
        ["lease held by", op.lease_holder || "nobody"],
        ["reconciles", `${op.reconciles}, ${op.errors} failed`],
      ]),
    );
    const rows = ov.services.map((s) =>
      el(
        "tr",
        { data: { service: s.service, state: s.state } },
        el("td", { class: "mono" }, s.service),
        el("td", { class: "mono" }, s.deployment || "–"),
        el("td", {}, span("state s-" + s.state, s.state)),
        el("td", { class: "num" }, String(s.ready_replicas)),
        el("td", { class: "reason" }, s.reason || ""),
      ),
    );
    fill(byId("service-rows"), rows);
    byId("services-empty").hidden = rows.length > 0;
  }

  // -- polling ----------------------------------------------------------------------

  const TOKEN_KEY = "meshgate-admin-token";

  // The admin server answered 401: ask for its bearer token once, keep it for
  // this tab (sessionStorage), and poll again at once when it is given.
  function askForToken(detail) {
    const form = byId("token-form");
    byId("token-detail").textContent = detail ? `(${detail})` : "";
    if (!form.hidden) return;
    form.hidden = false;
    form.onsubmit = (event) => {
      event.preventDefault();
      const value = byId("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      byId("token-input").value = "";
      form.hidden = true;
      clearTimeout(pollTimer);
      poll();
    };
  }

  async function getJson(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      // With a token (see askForToken), every request carries it.
      const token = sessionStorage.getItem(TOKEN_KEY);
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const response = await fetch(path, { signal: controller.signal, cache: "no-store", headers });
      if (response.status === 401) {
        const error = new Error(token ? "the token was refused" : "a token is needed");
        error.unauthorized = true;
        throw error;
      }
      if (!response.ok) {
        // The server is there but failed (its JSON error says why): not "disconnected".
        const body = await response.json().catch(() => ({}));
        const why = body.detail || body.error || "";
        const error = new Error(`${path} answered HTTP ${response.status}: ${why}`);
        error.answered = true;
        throw error;
      }
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  // state: "live", "disconnected" (no answer), "error" (an HTTP error) or
  // "locked" (the server wants a token).
  function setLink(state, detail) {
    const ok = state === "live";
    const link = byId("link");
    link.className = "pill " + (ok ? "ok" : "bad");
    link.textContent = state;
    link.title = detail || "";
    document.body.classList.toggle("stale", !ok);
    byId("disconnected").hidden = ok || state === "locked"; // locked: the token form says it
    const title = state === "error" ? "Admin server error." : "Disconnected.";
    byId("disconnected-title").textContent = title;
    byId("disconnected-detail").textContent = detail || "";
  }

  async function poll() {
    try {
      // Relative paths: the page also works behind a proxy under a prefix.
      const [overview, stats, errors] = await Promise.all([
        getJson("api/overview"),
        getJson("api/stats"),
        getJson("api/errors"),
      ]);
      // The server may answer a poll with the scrape it gave the last one
      // (it collects at most once a second): no new rates from that.
      const fresh = !previous || stats.time > previous.time;
      const rates = fresh || !latest ? computeRates(stats, previous) : latest.rates;
      if (fresh) {
        remember(stats, rates);
        previous = stats;
      }
      latest = { overview, stats, errors, rates };
      lastGood = Date.now();
      byId("token-form").hidden = true;
      setLink("live");
      render();
    } catch (err) {
      const age = (Date.now() - lastGood) / 1000;
      const since = lastGood ? ` (last good answer ${fmtAge(age)} ago)` : "";
      if (err.unauthorized) {
        setLink("locked", `The admin server asks for a token: ${err.message}.`);
        askForToken(err.message);
      } else if (err.answered) setLink("error", `${err.message}${since}.`);
      else setLink("disconnected", `Cannot reach the admin server${since}.`);
    } finally {
      pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  function render() {
    const { overview, stats, errors, rates } = latest;
    renderHeader(overview);
    renderMesh(overview);
    renderConfig(overview);
    renderListeners(overview, rates);
    renderTraffic(overview, stats);
    renderRoutes(overview, rates);
    renderErrors(errors);
    renderOperator(overview);
    drawAllCharts();
  }

  // Exposed for the browser test (quantile arithmetic) and for debugging.
  window.meshgateDashboard = { quantile, rate, niceCeiling };
  window.addEventListener("resize", () => latest && drawAllCharts());
  poll();
})();
