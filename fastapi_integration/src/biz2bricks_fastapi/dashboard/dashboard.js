// The usage dashboard: every number comes from the usage API next to this page
// (GET <org>/summary, GET <org>?..., GET <org>/alerts). No library, no CDN: plain DOM and SVG.
"use strict";

(function () {
  const base = location.pathname.replace(/\/dashboard\/?$/, "");
  const timeZone = new URLSearchParams(location.search).get("time_zone") || "UTC";
  const COLORS = ["#3867d6", "#20bf6b", "#f7b731", "#eb3b5a", "#8854d0", "#0fb9b1", "#fa8231",
    "#4b6584", "#a5b1c2", "#2d98da"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const count = (n) => (n === null || n === undefined ? "unlimited" : Number(n).toLocaleString("en-US"));
  const money = (c) => (c === null ? "n/a" : "$" + Number(c).toFixed(2));

  async function get(path, params) {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    const response = await fetch(base + path + query, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${base + path}: HTTP ${response.status}`);
    return response.json();
  }

  function show(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text;
  }

  function localDate(offsetDays) {
    const d = new Date(Date.now() + offsetDays * 86400000);
    return new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" }).format(d);
  }

  function period(s) {
    show("org", s.organization_id, s.organization_id);
    show("plan", s.plan, s.plan);
    $("period").textContent = `${s.period_start.slice(0, 10)} to ${s.period_end.slice(0, 10)}`;
    show("tokens-used", s.tokens_used_period, count(s.tokens_used_period));
    show("allowance", s.allowance, count(s.allowance));
    show("token-limit", s.token_limit, count(s.token_limit));
    show("credits-remaining", s.credits_remaining, count(s.credits_remaining));
    show("tokens-reserved", s.tokens_reserved, count(s.tokens_reserved));
    show("tokens-remaining", s.tokens_remaining, count(s.tokens_remaining));
    show("cost", s.cost_usd_period, money(s.cost_usd_period));
    show("unpriced-events", s.unpriced_events_period, count(s.unpriced_events_period));
    $("unpriced-note").hidden = s.unpriced_events_period === 0;
    if (s.allowance) {
      const pct = (n) => Math.min(100, (100 * n) / s.allowance) + "%";
      $("meter-used").style.width = pct(s.tokens_used_period);
      $("meter-held").style.width = pct(s.tokens_reserved);
    }
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function daily(rows, from, days) {
    const models = [...new Set(rows.map((r) => r.groups.model))].sort();
    const byDay = new Map();
    for (const r of rows) {
      const day = r.window_start.slice(0, 10);
      if (!byDay.has(day)) byDay.set(day, new Map());
      byDay.get(day).set(r.groups.model, r.total_tokens);
    }
    const dates = [];
    for (let i = 0; i < days; i++) dates.push(new Date(Date.parse(from + "T12:00:00Z") + i * 86400000).toISOString().slice(0, 10));
    const totals = dates.map((d) => [...(byDay.get(d) || new Map()).values()].reduce((a, b) => a + b, 0));
    const max = Math.max(1, ...totals);
    const W = 960, H = 260, left = 64, bottom = 24, top = 8;
    const band = (W - left) / dates.length;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "daily tokens by model" });
    for (let g = 0; g <= 4; g++) {
      const y = top + ((H - top - bottom) * (4 - g)) / 4;
      el("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#e4e7ec" }, svg);
      el("text", { x: left - 6, y: y + 3, "text-anchor": "end" }, svg).textContent = count(Math.round((max * g) / 4));
    }
    dates.forEach((d, i) => {
      let y = H - bottom;
      models.forEach((m, k) => {
        const v = (byDay.get(d) || new Map()).get(m) || 0;
        if (!v) return;
        const h = ((H - top - bottom) * v) / max;
        y -= h;
        const rect = el("rect", { x: left + i * band + 2, y, width: Math.max(band - 4, 1), height: h, fill: COLORS[k % COLORS.length] }, svg);
        el("title", {}, rect).textContent = `${d} ${m}: ${count(v)} tokens`;
      });
      if (i % 5 === 0 || i === dates.length - 1) {
        el("text", { x: left + i * band + band / 2, y: H - 6, "text-anchor": "middle" }, svg).textContent = d.slice(5);
      }
    });
    $("daily").replaceChildren(svg);
    $("legend").replaceChildren(...models.map((m, k) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.style.background = COLORS[k % COLORS.length];
      li.append(swatch, m);
      return li;
    }));
  }

  function top(tableId, rows, dimension, label) {
    const sorted = [...rows].sort((a, b) => b.total_tokens - a.total_tokens).slice(0, 10);
    $(tableId).tBodies[0].replaceChildren(...sorted.map((r) => {
      const tr = document.createElement("tr");
      const cost = r.cost_usd === null ? `${r.unpriced_events} unpriced` : money(r.cost_usd);
      for (const text of [r.groups[dimension] || label, count(r.requests), count(r.total_tokens), cost]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  function alerts(list) {
    const body = $("alerts").tBodies[0];
    if (!list.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 4;
      td.textContent = "No alerts in this period.";
      tr.appendChild(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...list.map((a) => {
      const tr = document.createElement("tr");
      for (const text of [a.created_at.replace("T", " ").slice(0, 16), a.threshold_pct + "%", count(a.used), count(a.allowance)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  async function load() {
    $("tz").textContent = timeZone;
    const summary = await get("/summary");
    period(summary);
    const from = localDate(-29), to = localDate(1);
    const periodRange = { from: summary.period_start, to: summary.period_end, time_zone: timeZone };
    const [byDay, users, operations, latest] = await Promise.all([
      get("", { from, to, window: "day", group_by: "model", time_zone: timeZone }),
      get("", { ...periodRange, group_by: "user_id" }),
      get("", { ...periodRange, group_by: "operation" }),
      get("/alerts", { limit: 8 }),
    ]);
    daily(byDay.rows, from, 30);
    top("top-users", users.rows, "user_id", "(no user)");
    top("top-operations", operations.rows, "operation", "(none)");
    alerts(latest.alerts);
    $("status").textContent = "Updated " + new Date().toISOString().replace("T", " ").slice(0, 19) + " UTC";
    document.body.dataset.loaded = "true";
  }

  load().catch((error) => {
    $("status").textContent = "Could not load the usage: " + error.message;
    console.error(error);
  });
})();
