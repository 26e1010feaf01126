// relaygate dashboard: plain JavaScript, no build step. Every value from the gateway reaches the page as text
// (textContent), never as markup. The master key lives in this tab's sessionStorage only: never a cookie, never
// a URL; it is sent as an Authorization header to the gateway's own APIs (docs/dashboard.md).
"use strict";
(() => {
  const KEY = "relaygate.masterKey";
  const REFRESH_MS = 30000;
  const view = document.getElementById("view");
  let session = null; // what /dashboard/api/session said about this gateway
  let cleanups = []; // what the current page must undo when another is shown (timers, listeners, charts)

  // ---- small helpers ---------------------------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "value" || k === "checked") el[k] = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const fmt = {
    num: (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", {
      maximumFractionDigits: digits, minimumFractionDigits: 0})),
    pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %"),
    ms: (v) => (v === null || v === undefined ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms"),
    usd: (v) => (v === null || v === undefined ? "–" : "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2)
      : v.toPrecision(3))),
    time: (t) => (t ? new Date(t * 1000).toLocaleString("sv-SE") : "–"),
    list: (v) => (v && v.length ? v.join(", ") : "all"),
  };

  class ApiError extends Error {
    constructor(status, body) {
      const err = body && body.error ? body.error : {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || null;
      this.param = err.param || null;
    }
  }

  async function api(method, path, body) {
    const headers = {authorization: "Bearer " + (sessionStorage.getItem(KEY) || "")};
    if (body !== undefined) headers["content-type"] = "application/json";
    const resp = await fetch(path, {method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body)});
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (resp.status === 401) {
      logout("The gateway refused the master key; log in again.");
      throw new ApiError(resp.status, data);
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined && v !== false) q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  function errorBox(e) { return h("p", {class: "error", role: "alert", text: e.message || String(e)}); }

  function show(...nodes) {
    view.replaceChildren(...nodes);
  }

  // ---- login -----------------------------------------------------------------------------------------------
  function logout(message) {
    sessionStorage.removeItem(KEY);
    session = null;
    runCleanups();
    view.replaceChildren();
    document.getElementById("app").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message || "";
    document.getElementById("master-key").focus();
  }

  async function start() {
    try {
      session = await api("GET", "/dashboard/api/session");
    } catch (e) {
      if (e.status !== 401) logout(e.message);
      return;
    }
    document.getElementById("login").hidden = true;
    document.getElementById("app").hidden = false;
    route();
  }

  document.getElementById("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("master-key");
    sessionStorage.setItem(KEY, input.value);
    input.value = "";
    start();
  });
  document.getElementById("logout").addEventListener("click", () => logout("Logged out."));

  // ---- routing ---------------------------------------------------------------------------------------------
  const PAGES = {overview, providers, keys, logs, models, alerts};

  function runCleanups() {
    for (const fn of cleanups) fn();
    cleanups = [];
  }

  function route(refresh) {
    if (!session) return;
    const name = (location.hash || "#overview").slice(1).split("?")[0];
    const page = PAGES[name] || overview;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
    runCleanups();
    if (refresh !== true) show(h("p", {class: "muted", text: "Loading…"})); // a refresh keeps the page until new data came
    page().catch((e) => show(errorBox(e)));
  }
  window.addEventListener("hashchange", () => route());

  // ---- overview --------------------------------------------------------------------------------------------
  const CHARTS = [
    {title: "Requests per second", series: [["requests_per_second", "req/s", "#2f6fde"]], value: (v) => fmt.num(v, 3)},
    {title: "Error rate", series: [["error_rate", "all errors", "#c4362c"], ["server_error_rate", "5xx", "#e08a2c"]],
      value: fmt.pct},
    {title: "Latency", series: [["latency_p50_ms", "p50", "#2f6fde"], ["latency_p95_ms", "p95", "#8a4fd8"]], value: fmt.ms},
    {title: "Time to first token", series: [["ttft_p50_ms", "p50", "#1f8a4c"], ["ttft_p95_ms", "p95", "#b7791f"]],
      value: fmt.ms},
    {title: "Cost per hour (USD)", series: [["cost_usd_per_hour", "USD/h", "#1d2330"]], value: fmt.usd},
    {title: "Cache hit rate", series: [["cache_hit_rate", "hits", "#1f8a4c"]], value: fmt.pct},
    {title: "Tokens", series: [["prompt_tokens", "prompt", "#2f6fde"], ["completion_tokens", "completion", "#c4362c"]],
      value: (v) => fmt.num(v)},
  ];

  // the overview's filters: [query parameter, label, where the suggestions come from, the field that names one]
  const OVERVIEW_FILTERS = [["model", "Model", "/v1/models", "id"], ["key_id", "Key", "/admin/keys", "id"],
    ["team_id", "Team", "/admin/teams", "id"]];

  function overviewFilters(saved) {
    const form = h("form", {class: "filters", id: "overview-filters"},
      ...OVERVIEW_FILTERS.map(([name, label]) => h("label", {}, label,
        h("input", {name, type: "text", list: "overview-" + name, value: saved[name] || "", placeholder: "all"}))),
      ...OVERVIEW_FILTERS.map(([name]) => h("datalist", {id: "overview-" + name})),
      h("button", {type: "submit"}, "Apply"),
      h("button", {type: "button", class: "quiet", onclick: () => {
        sessionStorage.removeItem("relaygate.overviewFilters"); route(); }}, "Clear"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = Object.fromEntries([...new FormData(form)].map(([k, v]) => [k, String(v).trim()]).filter(([, v]) => v));
      sessionStorage.setItem("relaygate.overviewFilters", JSON.stringify(f));
      route();
    });
    // suggestions, after the page shows (never in its way; one that fails only leaves its list empty)
    for (const [name, , path, field] of OVERVIEW_FILTERS) {
      api("GET", path).then((list) => form.querySelector("#overview-" + name).replaceChildren(
        ...(list.data || []).map((item) => h("option", {value: item[field]})))).catch(() => {});
    }
    return form;
  }

  async function overview() {
    const windowName = sessionStorage.getItem("relaygate.window") || "hour";
    const saved = JSON.parse(sessionStorage.getItem("relaygate.overviewFilters") || "{}");
    const filters = overviewFilters(saved);
    let data;
    try {
      data = await api("GET", "/dashboard/api/overview" + query({window: windowName, ...saved}));
    } catch (e) {
      if (e.status !== 400) throw e;
      show(h("h1", {text: "Overview"}), filters, errorBox(e)); // a bad filter: named, and the form to correct it
      return;
    }
    const t = data.totals;
    const pick = (name) => h("button", {class: name === windowName ? "" : "quiet", type: "button",
      onclick: () => { sessionStorage.setItem("relaygate.window", name); route(); }}, name === "hour" ? "Last hour" : "Last day");
    const tile = (label, value) => h("div", {class: "tile"}, h("div", {class: "label", text: label}),
      h("div", {class: "value", text: value}));
    const charts = h("div", {class: "charts"});
    const narrowed = Object.entries(data.filters || {}).map(([k, v]) => `${k.replace("_id", "")} ${v}`).join(", ");
    show(h("h1", {text: "Overview"}), filters,
      h("div", {class: "toolbar"}, pick("hour"), pick("day"),
        h("span", {class: "muted", id: "overview-scope", text: `${narrowed ? "calls of " + narrowed : "every call"}; ` +
          `from the request log, ${data.bucket_seconds / 60}-minute buckets; refreshed every 30 s`})),
      h("div", {class: "tiles"},
        tile("Requests", fmt.num(t.requests)), tile("Requests/s", fmt.num(t.requests_per_second, 3)),
        tile("Error rate", fmt.pct(t.error_rate)), tile("Latency p50 / p95", `${fmt.ms(t.latency_p50_ms)} / ${fmt.ms(t.latency_p95_ms)}`),
        tile("TTFT p50 / p95", `${fmt.ms(t.ttft_p50_ms)} / ${fmt.ms(t.ttft_p95_ms)}`),
        tile("Cost", fmt.usd(t.cost_usd)), tile("Cost per hour", fmt.usd(t.cost_usd_per_hour)),
        tile("Cache hit rate", fmt.pct(t.cache_hit_rate)),
        tile("Tokens in / out", `${fmt.num(t.prompt_tokens)} / ${fmt.num(t.completion_tokens)}`)),
      charts);
    const plots = CHARTS.map((c) => chart(charts, c, data));
    const resize = () => plots.forEach(({plot, box}) => plot.setSize({width: box.clientWidth - 12, height: 180}));
    window.addEventListener("resize", resize);
    const timer = setInterval(() => { if (!document.hidden) route(true); }, REFRESH_MS);
    cleanups.push(() => { clearInterval(timer); window.removeEventListener("resize", resize);
      plots.forEach(({plot}) => plot.destroy()); });
  }

  function chart(parent, spec, data) {
    const box = h("div", {class: "chart"}, h("h3", {text: spec.title}));
    parent.append(box);
    const b = data.buckets;
    const opts = {
      width: Math.max(box.clientWidth - 12, 300), height: 180,
      series: [{}, ...spec.series.map(([, label, stroke]) => ({label, stroke, width: 1.5, spanGaps: false, points: {show: true, size: 4},
        value: (u, v) => spec.value(v)}))],
      axes: [{}, {size: 76, values: (u, ticks) => ticks.map((v) => spec.value(v))}],
      scales: {y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
      legend: {live: true},
    };
    const plot = new uPlot(opts, [b.t, ...spec.series.map(([name]) => b[name])], box);
    return {plot, box};
  }

  // ---- providers -------------------------------------------------------------------------------------------
  async function providers() {
    const data = await api("GET", "/health/providers");
    const s = data.summary;
    const stateClass = (st) => (st === "healthy" ? "good" : st === "unhealthy" || st === "open" ? "bad" : "warn");
    const rows = data.deployments.map((d) => h("tr", {},
      h("td", {class: "mono", text: d.deployment}), h("td", {text: d.model}), h("td", {text: d.provider}),
      h("td", {}, h("span", {class: "badge " + stateClass(d.state), text: d.state})),
      h("td", {class: "num", text: fmt.num(d.score)}),
      h("td", {text: d.breaker ? d.breaker.state : "–"}),
      h("td", {class: "num", text: fmt.ms(d.latency_ms)}), h("td", {class: "num", text: fmt.ms(d.baseline_latency_ms)}),
      h("td", {class: "num", text: fmt.pct(d.error_rate)}), h("td", {class: "num", text: fmt.num(d.in_flight)}),
      h("td", {class: "num", text: fmt.num(d.requests)}), h("td", {class: "num", text: fmt.num(d.failures)}),
      h("td", {text: d.health_check ? (d.health_check.healthy ? "ok" : d.health_check.last_error || "failing") : "–"})));
    show(h("h1", {text: "Providers and deployments"}),
      h("div", {class: "tiles"},
        h("div", {class: "tile"}, h("div", {class: "label", text: "Gateway"}), h("div", {class: "value", text: s.status})),
        h("div", {class: "tile"}, h("div", {class: "label", text: "Health score"}), h("div", {class: "value", text: fmt.num(s.score)})),
        h("div", {class: "tile"}, h("div", {class: "label", text: "Healthy deployments"}),
          h("div", {class: "value", text: `${s.healthy} / ${s.deployments}`}))),
      h("table", {}, h("thead", {}, h("tr", {}, ...["Deployment", "Model", "Provider", "State", "Score", "Breaker",
        "Latency", "Baseline", "Error rate", "In flight", "Requests", "Failures", "Health check"].map((c) => h("th", {text: c})))),
      h("tbody", {}, rows)),
      h("p", {class: "muted", text: "Latency and error rate are moving averages of recent calls (GET /health/providers)."}));
    const timer = setInterval(() => { if (!document.hidden) route(true); }, REFRESH_MS);
    cleanups.push(() => clearInterval(timer));
  }

  // ---- keys, teams, users ----------------------------------------------------------------------------------
  const LIMIT_FIELDS = [["name", "Name", "text"], ["models", "Models (comma-separated; empty: all)", "text"],
    ["rpm", "Requests/min", "number"], ["tpm", "Tokens/min", "number"], ["max_parallel", "Parallel calls", "number"],
    ["budget_usd", "Budget (USD)", "number"]];

  function limitInputs(current) {
    const c = current || {};
    const inputs = LIMIT_FIELDS.map(([name, label, type]) => h("label", {}, label, h("input", {name, type,
      step: name === "budget_usd" ? "any" : type === "number" ? "1" : null, min: type === "number" ? "0" : null,
      value: name === "models" ? (c.models || []).join(", ") : c[name] ?? ""})));
    const period = h("select", {name: "budget_period"}, ...["total", "day", "month"].map((p) =>
      h("option", {value: p, selected: (c.budget_period || "total") === p}, p)));
    return [...inputs, h("label", {}, "Budget period", period)];
  }

  function limitBody(form) {
    const f = new FormData(form);
    const body = {};
    for (const [name, , type] of LIMIT_FIELDS) {
      const raw = String(f.get(name) || "").trim();
      if (name === "models") body.models = raw ? raw.split(",").map((m) => m.trim()).filter(Boolean) : null;
      else if (type === "number") body[name] = raw === "" ? null : Number(raw);
      else body[name] = raw || null;
    }
    body.budget_period = f.get("budget_period");
    return body;
  }

  function budgetCell(v) {
    if (v.budget_usd === null || v.budget_usd === undefined) return h("td", {text: v.spend_usd !== undefined ? `${fmt.usd(v.spend_usd)} (no budget)` : "–"});
    const used = v.budget_usd > 0 ? v.spend_usd / v.budget_usd : 1;
    const fill = h("span");
    fill.style.width = Math.min(100, used * 100).toFixed(1) + "%";
    return h("td", {}, `${fmt.usd(v.spend_usd)} of ${fmt.usd(v.budget_usd)} / ${v.budget_period || "total"}`,
      h("div", {class: "bar" + (used >= 1 ? " over" : "")}, fill));
  }

  function twoStep(label, confirmLabel, action) {
    const btn = h("button", {type: "button", class: "small quiet", text: label});
    btn.addEventListener("click", async () => {
      if (btn.dataset.armed !== "1") {
        btn.dataset.armed = "1";
        btn.textContent = confirmLabel;
        btn.className = "small danger";
        return;
      }
      btn.disabled = true;
      await action();
    });
    return btn;
  }

  function secretPanel(title, secret) {
    const panel = h("div", {class: "secret", role: "status"}, h("strong", {text: title}),
      h("code", {class: "mono", id: "new-secret", text: secret}),
      h("span", {class: "muted", text: "Copy it now: the gateway keeps only its hash and will not show it again. "}),
      h("button", {type: "button", class: "small quiet", onclick: () => panel.remove()}, "Done"));
    return panel;
  }

  async function keys() {
    const tab = sessionStorage.getItem("relaygate.keysTab") || "keys";
    const tabs = h("div", {class: "tabs"}, ...[["keys", "Keys"], ["team", "Teams"], ["user", "Users"]].map(([name, label]) =>
      h("button", {type: "button", class: name === tab ? "active" : "", onclick: () => {
        sessionStorage.setItem("relaygate.keysTab", name); route(); }}, label)));
    if (tab === "keys") return keyList(tabs);
    return ownerList(tabs, tab);
  }

  async function keyList(tabs, message) {
    const withRevoked = sessionStorage.getItem("relaygate.revoked") === "1";
    const [list, teams] = await Promise.all([api("GET", "/admin/keys" + query({include_revoked: withRevoked ? "true" : ""})),
      api("GET", "/admin/teams")]);
    const status = h("div");
    if (message) status.append(message);
    const create = h("form", {id: "create-key"}, ...limitInputs(null),
      h("label", {}, "Team", h("select", {name: "team_id"}, h("option", {value: ""}, "none"),
        ...teams.data.map((t) => h("option", {value: t.id}, t.id)))),
      h("label", {}, "User", h("input", {name: "user_id", type: "text"})),
      h("button", {type: "submit"}, "Create key"));
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = limitBody(create);
      const f = new FormData(create);
      if (f.get("team_id")) body.team_id = f.get("team_id");
      if (String(f.get("user_id")).trim()) body.user_id = String(f.get("user_id")).trim();
      try {
        const made = await api("POST", "/admin/keys", body);
        await keyList(tabs, secretPanel(`New key ${made.id} (${made.name || "unnamed"})`, made.key));
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    const rows = list.data.map((k) => {
      const actions = h("td", {});
      if (!k.revoked_at) {
        actions.append(
          h("button", {type: "button", class: "small quiet", onclick: () => editPanel(k, "/admin/keys/" + k.id, () => keyList(tabs))}, "Edit"), " ",
          twoStep("Rotate", "Confirm rotate", async () => {
            try {
              const made = await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/rotate`);
              await keyList(tabs, secretPanel(`Rotated ${k.id}: its new secret (the old one works for the grace period)`, made.key));
            } catch (e) { status.replaceChildren(errorBox(e)); }
          }), " ",
          twoStep("Revoke", "Confirm revoke", async () => {
            try {
              await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/revoke`);
              await keyList(tabs, h("p", {class: "notice", text: `Key ${k.id} revoked.`}));
            } catch (e) { status.replaceChildren(errorBox(e)); }
          }));
      }
      const state = k.revoked_at ? h("span", {class: "badge bad", text: "revoked"})
        : k.expires_at && k.expires_at * 1000 < Date.now() ? h("span", {class: "badge warn", text: "expired"})
          : h("span", {class: "badge good", text: "active"});
      return h("tr", {"data-key-id": k.id},
        h("td", {text: k.name || "–"}), h("td", {class: "mono", text: k.id}), h("td", {class: "mono", text: k.prefix}),
        h("td", {}, state), h("td", {text: k.team_id || "–"}), h("td", {text: k.user_id || "–"}),
        h("td", {text: fmt.list(k.models)}),
        h("td", {class: "num", text: [k.rpm, k.tpm, k.max_parallel].map((v) => (v === null ? "–" : fmt.num(v))).join(" / ")}),
        budgetCell(k), h("td", {text: fmt.time(k.created_at)}), actions);
    });
    const revokedToggle = h("label", {class: "check"}, h("input", {type: "checkbox", checked: withRevoked, onchange: (ev) => {
      sessionStorage.setItem("relaygate.revoked", ev.target.checked ? "1" : "0"); keyList(tabs); }}), "show revoked keys");
    show(h("h1", {text: "Keys, teams and users"}), tabs, status,
      h("div", {class: "panel"}, h("h2", {text: "New key"}), create),
      h("div", {id: "edit-slot"}),
      h("div", {class: "toolbar"}, revokedToggle),
      h("table", {id: "keys-table"}, h("thead", {}, h("tr", {}, ...["Name", "Id", "Prefix", "State", "Team", "User", "Models",
        "rpm / tpm / parallel", "Spend against budget", "Created", ""].map((c) => h("th", {text: c})))), h("tbody", {}, rows)));
  }

  function editPanel(current, path, done) {
    const slot = document.getElementById("edit-slot");
    const status = h("div");
    const form = h("form", {}, ...limitInputs(current), h("button", {type: "submit"}, "Save limits"),
      h("button", {type: "button", class: "quiet", onclick: () => slot.replaceChildren()}, "Cancel"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("PATCH", path, limitBody(form));
        slot.replaceChildren();
        await done();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    slot.replaceChildren(h("div", {class: "panel"}, h("h2", {text: `Edit ${current.id}`}), form, status));
    slot.scrollIntoView({block: "nearest"});
  }

  async function ownerList(tabs, kind) {
    const list = await api("GET", `/admin/${kind}s`);
    const status = h("div");
    const create = h("form", {}, h("label", {}, "Id", h("input", {name: "id", type: "text", required: true, maxlength: "100"})),
      ...limitInputs(null), h("button", {type: "submit"}, `Create ${kind}`));
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {id: String(new FormData(create).get("id")).trim(), ...limitBody(create)};
      try {
        await api("POST", `/admin/${kind}s`, body);
        await ownerList(tabs, kind);
      } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    const rows = list.data.map((o) => h("tr", {},
      h("td", {class: "mono", text: o.id}), h("td", {text: o.name || "–"}), h("td", {text: fmt.list(o.models)}),
      h("td", {class: "num", text: [o.rpm, o.tpm, o.max_parallel].map((v) => (v === null ? "–" : fmt.num(v))).join(" / ")}),
      budgetCell(o), h("td", {text: fmt.time(o.created_at)}),
      h("td", {}, h("button", {type: "button", class: "small quiet",
        onclick: () => editPanel(o, `/admin/${kind}s/${encodeURIComponent(o.id)}`, () => ownerList(tabs, kind))}, "Edit"))));
    show(h("h1", {text: "Keys, teams and users"}), tabs, status,
      h("div", {class: "panel"}, h("h2", {text: `New ${kind}`}), create), h("div", {id: "edit-slot"}),
      h("table", {}, h("thead", {}, h("tr", {}, ...["Id", "Name", "Models", "rpm / tpm / parallel", "Spend against budget",
        "Created", ""].map((c) => h("th", {text: c})))), h("tbody", {}, rows)));
  }

  // ---- log explorer ----------------------------------------------------------------------------------------
  const LOG_FILTERS = [["key_id", "Key id"], ["team_id", "Team"], ["model", "Model"]];

  async function logs() {
    const saved = JSON.parse(sessionStorage.getItem("relaygate.logFilters") || "{}");
    const form = h("form", {class: "filters", id: "log-filters"},
      ...LOG_FILTERS.map(([name, label]) => h("label", {}, label, h("input", {name, type: "text", value: saved[name] || ""}))),
      h("label", {}, "Status", h("select", {name: "status"}, ...[["", "any"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"]]
        .map(([v, l]) => h("option", {value: v, selected: (saved.status || "") === v}, l)))),
      h("label", {}, "From", h("input", {name: "start", type: "datetime-local", value: saved.start || ""})),
      h("label", {}, "To", h("input", {name: "end", type: "datetime-local", value: saved.end || ""})),
      h("button", {type: "submit"}, "Search"));
    const detail = h("div", {id: "log-detail"});
    const status = h("div");
    const body = h("tbody");
    const more = h("button", {type: "button", class: "quiet", hidden: true}, "Load more");
    let cursor = null;
    let latest = 0; // only the newest search renders: an older answer arriving late is dropped
    const params = () => {
      const f = Object.fromEntries(new FormData(form));
      sessionStorage.setItem("relaygate.logFilters", JSON.stringify(f));
      const p = {key_id: f.key_id.trim(), team_id: f.team_id.trim(), model: f.model.trim(), status_class: f.status, limit: 50};
      if (f.start) p.start = Date.parse(f.start) / 1000;
      if (f.end) p.end = Date.parse(f.end) / 1000;
      return p;
    };
    const load = async (append) => {
      const mine = ++latest;
      try {
        const page = await api("GET", "/admin/logs" + query({...params(), cursor: append ? cursor : ""}));
        if (mine !== latest) return;
        if (!append) body.replaceChildren();
        body.append(...page.data.map((r) => logRow(r, detail)));
        if (!append && !page.data.length) body.append(h("tr", {}, h("td", {colspan: "11", class: "muted", text: "No calls match."})));
        cursor = page.next_cursor;
        more.hidden = !cursor;
        status.replaceChildren();
      } catch (e) { status.replaceChildren(errorBox(e)); }
    };
    form.addEventListener("submit", (ev) => { ev.preventDefault(); detail.replaceChildren(); load(false); });
    more.addEventListener("click", () => load(true));
    show(h("h1", {text: "Log explorer"}), form, status, detail,
      h("table", {id: "log-table"}, h("thead", {}, h("tr", {}, ...["Time", "Status", "Model", "Deployment", "Key", "Team",
        "Latency", "TTFT", "Tokens in / out", "Cost", "Attempts"].map((c) => h("th", {text: c})))), body), more);
    await load(false);
  }

  function logRow(r, detail) {
    const ok = r.status < 400;
    return h("tr", {class: "clickable", "data-uid": r.uid, title: "Open this call", onclick: () => openCall(r.uid, detail)},
      h("td", {text: fmt.time(r.ts)}),
      h("td", {}, h("span", {class: "badge " + (ok ? "good" : r.status >= 500 ? "bad" : "warn"), text: String(r.status)}),
        r.error ? " " + r.error : ""),
      h("td", {text: r.model || "–"}), h("td", {class: "mono", text: r.deployment || "–"}),
      h("td", {class: "mono", text: r.key_id || "–"}), h("td", {text: r.team_id || "–"}),
      h("td", {class: "num", text: fmt.ms(r.latency_ms)}), h("td", {class: "num", text: fmt.ms(r.ttft_ms)}),
      h("td", {class: "num", text: `${fmt.num(r.prompt_tokens)} / ${fmt.num(r.completion_tokens)}`}),
      h("td", {class: "num", text: fmt.usd(r.cost_usd)}), h("td", {class: "num", text: fmt.num(r.attempts)}));
  }

  const DETAIL_FIELDS = [["request_id", "Request id"], ["uid", "Log row"], ["ts", "Time", fmt.time], ["route", "Route"],
    ["model", "Model asked for"], ["deployment", "Deployment"], ["provider", "Provider"], ["stream", "Streamed"],
    ["status", "Status"], ["error", "Error kind"], ["error_message", "Error"], ["latency_ms", "Latency", fmt.ms],
    ["ttft_ms", "Time to first token", fmt.ms], ["attempts", "Attempts (retries and fallbacks)"],
    ["prompt_tokens", "Prompt tokens"], ["completion_tokens", "Completion tokens"], ["cached_tokens", "Cached tokens"],
    ["usage_estimated", "Usage counted by the gateway"], ["cost_usd", "Cost", fmt.usd], ["cache_hit", "Answered from cache"],
    ["condensed", "Condensed to fit the context", condensedText], ["key_id", "Key"], ["team_id", "Team"], ["user_id", "User"], ["client_ip", "Client"]];

  // a condensed call's log row (docs/cache.md#condensation): what was done, in a line
  function condensedText(c) {
    if (typeof c !== "object") return String(c);
    const what = c.strategy === "summarize" ? `${c.summarized} summarized${c.summary_reused ? " (summary reused)" : ""}`
      : `${c.dropped} dropped`;
    return `${c.strategy}${c.retried ? " after the upstream's context error" : ""}: messages ${c.messages_before} → `
      + `${c.messages_after} (${what}), ~${c.tokens_before} → ~${c.tokens_after} tokens`;
  }

  async function openCall(uid, detail) {
    try {
      const r = await api("GET", "/dashboard/api/logs/" + encodeURIComponent(uid));
      const dl = h("dl", {class: "fields"});
      for (const [name, label, f] of DETAIL_FIELDS) {
        const v = r[name];
        dl.append(h("dt", {text: label}), h("dd", {class: name.endsWith("id") ? "mono" : "", text:
          v === null || v === undefined ? "–" : f ? f(v) : typeof v === "boolean" ? (v ? "yes" : "no") : String(v)}));
      }
      const bodies = ["request_body", "response_body"].map((name) => (r[name] ? [h("h2", {text: name === "request_body"
        ? "Request body (redacted)" : "Response body (redacted)"}), h("pre", {class: "body", text: pretty(r[name])})] : []));
      detail.replaceChildren(h("div", {class: "panel", id: "call-detail"},
        h("div", {class: "toolbar"}, h("h2", {text: `Call ${r.request_id}`}),
          h("button", {type: "button", class: "small quiet", onclick: () => detail.replaceChildren()}, "Close")),
        dl, attemptTable(r), ...bodies.flat(),
        r.request_body || r.response_body ? null : h("p", {class: "muted",
          text: "Bodies are not stored (request_log.bodies: false in the config)."})));
      detail.scrollIntoView({block: "nearest"});
    } catch (e) { detail.replaceChildren(errorBox(e)); }
  }

  // a retried call's attempts (request_log.attempt_log): each on a timeline from the call's start
  function attemptTable(r) {
    const tries = r.attempt_log;
    if (!tries || !tries.length) return null;
    const total = Math.max(r.latency_ms || 0, ...tries.map((t) => t.start_ms + t.ms)) || 1;
    const bar = (t) => h("div", {class: "timeline"}, h("div", {class: "attempt-bar " + (t.error ? "bad" : "good"),
      "data-left": (t.start_ms / total * 100).toFixed(1), "data-width": Math.max(t.ms / total * 100, 0.5).toFixed(1)}));
    const table = h("table", {id: "call-attempts"},
      h("thead", {}, h("tr", {}, ...["#", "Deployment", "Provider", "Status", "Error", "Started at", "Took", "Timeline"]
        .map((c) => h("th", {text: c})))),
      h("tbody", {}, ...tries.map((t, i) => h("tr", {},
        h("td", {class: "num", text: String(i + 1)}), h("td", {class: "mono", text: t.deployment || "–"}),
        h("td", {text: t.provider || "–"}),
        h("td", {}, h("span", {class: "badge " + (t.error ? (t.status >= 500 ? "bad" : "warn") : "good"),
          text: t.status === null || t.status === undefined ? "–" : String(t.status)})),
        h("td", {text: t.error || "–"}), h("td", {class: "num", text: "+" + fmt.ms(t.start_ms)}),
        h("td", {class: "num", text: fmt.ms(t.ms)}), h("td", {}, bar(t))))));
    // widths set through the CSSOM (the page's policy refuses inline style attributes)
    for (const el of table.querySelectorAll(".attempt-bar")) {
      el.style.marginLeft = el.dataset.left + "%";
      el.style.width = el.dataset.width + "%";
    }
    return [h("h2", {text: `Attempts (${tries.length}: retries and fallbacks)`}), table];
  }

  function pretty(text) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
  }

  // ---- models ----------------------------------------------------------------------------------------------
  const CAPABILITIES = ["supports_chat", "supports_vision", "supports_tools", "supports_audio", "supports_embeddings",
    "supports_reasoning"];
  const BADGES = [...CAPABILITIES, "supports_json_schema"];
  const PAGE_SIZE = 60;
  // card prices (USD per 1M tokens, or per second / character of audio) and how each is shown
  const PRICES = [["input", "input", "/ 1M"], ["output", "output", "/ 1M"], ["cached_input", "cached input", "/ 1M"],
    ["cache_write", "cache write", "/ 1M"], ["audio_input", "audio in", "/ 1M"], ["audio_output", "audio out", "/ 1M"],
    ["per_second", "per second", ""], ["per_character", "per character", ""]];

  async function models() {
    const saved = JSON.parse(sessionStorage.getItem("relaygate.modelFilters") || "{}");
    const form = h("form", {class: "filters", id: "model-filters"},
      h("label", {}, "Search", h("input", {name: "q", type: "search", value: saved.q || "", placeholder: "name or text"})),
      h("label", {}, "Provider", h("input", {name: "provider", type: "text", value: saved.provider || ""})),
      h("label", {}, "Min. context (tokens)", h("input", {name: "min_context", type: "number", min: "0", value: saved.min_context || ""})),
      h("label", {}, "Max. cost (USD / 1M input)", h("input", {name: "max_cost", type: "number", min: "0", step: "any",
        value: saved.max_cost || ""})),
      h("label", {}, "Sort", h("select", {name: "sort"}, ...["name", "cost", "context"].map((s) =>
        h("option", {value: s, selected: (saved.sort || "name") === s}, s)))),
      ...CAPABILITIES.map((c) => h("label", {class: "check"}, h("input", {type: "checkbox", name: c, checked: saved[c] === "true"}),
        c.replace("supports_", ""))),
      h("label", {class: "check"}, h("input", {type: "checkbox", name: "configured", checked: saved.configured === "true"}),
        "served here"),
      h("button", {type: "submit"}, "Search"));
    const out = h("div", {id: "model-results"});
    const cards = h("div", {class: "cards"});
    const summary = h("p", {class: "muted"});
    const more = h("button", {type: "button", class: "quiet", hidden: true}, "Load more");
    let next = null;
    let latest = 0; // only the newest search renders
    const filters = () => {
      const f = Object.fromEntries(new FormData(form));
      for (const c of [...CAPABILITIES, "configured"]) f[c] = f[c] ? "true" : "";
      sessionStorage.setItem("relaygate.modelFilters", JSON.stringify(f));
      return f;
    };
    const load = async (offset) => {
      const mine = ++latest;
      const f = filters();
      const filtered = Object.entries(f).some(([k, v]) => v && !(k === "sort" && v === "name"));
      try {
        const data = await api("GET", (filtered ? "/api/models/search" : "/api/models") +
          query({...f, limit: PAGE_SIZE, offset: offset || ""}));
        if (mine !== latest) return;
        if (!offset) cards.replaceChildren();
        cards.append(...data.data.map(modelCard));
        next = data.next_offset ?? null;
        more.hidden = !data.has_more || next === null;
        summary.textContent = `${data.total ?? data.data.length} model(s)` + (data.has_more ? `, ${cards.childElementCount} shown` : "");
        out.replaceChildren(summary, cards, more);
      } catch (e) {
        if (mine !== latest) return;
        if (e.status === 404 && e.code === "unknown_route") return fallbackModels(out);
        out.replaceChildren(errorBox(e));
      }
    };
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load(0); });
    more.addEventListener("click", () => load(next));
    show(h("h1", {text: "Models"}), form, out);
    await load(0);
  }

  async function fallbackModels(out) {
    const list = await api("GET", "/v1/models");
    out.replaceChildren(h("p", {class: "notice", id: "catalog-missing",
      text: "This gateway has no model catalog API (GET /api/models answered 404), so the search filters do not " +
        "apply: these are the configured models, as GET /v1/models lists them."}),
    h("div", {class: "cards"}, ...list.data.map((m) => h("div", {class: "card"}, h("h3", {text: m.id}),
      h("p", {class: "muted", text: m.owned_by ? `owned by ${m.owned_by}` : ""})))));
  }

  function modelCard(m) {
    const dl = h("dl", {class: "fields"});
    const add = (label, value) => {
      if (value !== null && value !== undefined && value !== "") dl.append(h("dt", {text: label}), h("dd", {text: String(value)}));
    };
    add("Provider", m.provider);
    if (m.context_window) add("Context window", fmt.num(m.context_window) + " tokens");
    if (m.max_output_tokens) add("Max. output", fmt.num(m.max_output_tokens) + " tokens");
    const prices = m.prices || {};
    for (const [name, label, unit] of PRICES) if (typeof prices[name] === "number") add(label, `$${prices[name]} ${unit}`);
    if (m.prices && prices.input === null && m.supports_chat) add("Price", "unknown (unpriced)");
    if (m.models && m.models.length) add("Served here as", m.models.join(", "));
    if (m.discovered) add("Listed by an upstream", m.stale ? "yes (stale: the last listing failed)" : "yes");
    if (m.error) add("Discovery error", m.error);
    const caps = BADGES.filter((c) => m[c] === true);
    return h("div", {class: "card", "data-model": m.id},
      h("h3", {text: m.id}), h("div", {}, ...caps.map((c) => h("span", {class: "badge good", text: c.replace("supports_", "")}))), dl,
      m.source ? h("p", {class: "source", text: `Source${m.as_of ? ` (${m.as_of})` : ""}: ${m.source}`}) : null);
  }

  // ---- alerts and chaos ------------------------------------------------------------------------------------
  async function alerts() {
    const data = await api("GET", "/admin/alerts");
    const rules = data.rules.map((r) => h("tr", {},
      h("td", {text: r.name}), h("td", {text: r.kind}), h("td", {text: r.severity || "–"}),
      h("td", {class: "num", text: r.threshold ?? "–"}), h("td", {class: "num", text: r.window ?? "–"}),
      h("td", {}, h("span", {class: "badge " + (r.firing ? "bad" : "good"), text: r.firing ? "firing" : "ok"})),
      h("td", {text: r.state.map((s) => `${s.subject || "gateway"}: ${s.value === null ? "n/a" : Number(s.value).toPrecision(3)}${s.firing ? " (firing)" : ""}`).join("; ") || "–"})));
    const recent = data.recent.map((n) => h("tr", {}, h("td", {text: fmt.time(n.at)}),
      h("td", {}, h("span", {class: "badge " + (n.status === "firing" ? "bad" : "good"), text: n.status})),
      h("td", {text: n.severity}), h("td", {text: n.summary})));
    const parts = [h("h1", {text: "Alerts and fault injection"}),
      h("p", {class: "muted", text: `Notifications sent ${data.sent}, failed ${data.failed}, dropped ${data.dropped}.`}),
      h("h2", {text: "Alert rules"}),
      data.rules.length ? h("table", {}, h("thead", {}, h("tr", {}, ...["Rule", "Kind", "Severity", "Threshold", "Window (s)", "Now",
        "Subjects"].map((c) => h("th", {text: c})))), h("tbody", {}, rules))
        : h("p", {class: "muted", text: "No alert rules are configured (alerts.rules)."}),
      h("h2", {text: "Fired recently"}),
      recent.length ? h("table", {}, h("thead", {}, h("tr", {}, ...["At", "Status", "Severity", "Summary"].map((c) =>
        h("th", {text: c})))), h("tbody", {}, recent)) : h("p", {class: "muted", text: "Nothing fired."}),
      h("h2", {text: "Fault injection (chaos)"})];
    const chaosSlot = h("div", {id: "chaos"});
    parts.push(chaosSlot);
    show(...parts);
    await chaosRules(chaosSlot);
  }

  async function chaosRules(slot) {
    if (!session.chaos) {
      slot.replaceChildren(h("p", {class: "notice", text: "Fault injection is off on this gateway (chaos.enabled: false in the config)."}));
      return;
    }
    const data = await api("GET", "/admin/chaos");
    const status = h("div");
    const rows = data.rules.map((r) => {
      const toggle = h("input", {type: "checkbox", class: "switch", checked: r.enabled, "aria-label": `rule ${r.name} on`});
      toggle.addEventListener("change", async () => {
        try { await api("PATCH", "/admin/chaos/" + encodeURIComponent(r.name), {enabled: toggle.checked}); await chaosRules(slot); }
        catch (e) { status.replaceChildren(errorBox(e)); }
      });
      return h("tr", {"data-rule": r.name}, h("td", {}, toggle), h("td", {text: r.name}), h("td", {text: r.fault}),
        h("td", {text: [r.model && `model ${r.model}`, r.deployment && `deployment ${r.deployment}`, r.route && `route ${r.route}`]
          .filter(Boolean).join(", ")}),
        h("td", {class: "num", text: r.probability}), h("td", {class: "num", text: fmt.num(r.injected)}),
        h("td", {}, twoStep("Delete", "Confirm delete", async () => {
          try { await api("DELETE", "/admin/chaos/" + encodeURIComponent(r.name)); await chaosRules(slot); }
          catch (e) { status.replaceChildren(errorBox(e)); }
        })));
    });
    const add = h("form", {id: "chaos-add"},
      h("label", {}, "Name", h("input", {name: "name", type: "text", required: true})),
      h("label", {}, "Fault", h("select", {name: "fault"}, ...["error", "rate_limit", "timeout", "latency", "drop", "stream_cut"]
        .map((f) => h("option", {value: f}, f)))),
      h("label", {}, "Model", h("input", {name: "model", type: "text"})),
      h("label", {}, "Deployment", h("input", {name: "deployment", type: "text"})),
      h("label", {}, "Probability", h("input", {name: "probability", type: "number", min: "0", max: "1", step: "any", value: "1"})),
      h("label", {class: "check"}, h("input", {name: "enabled", type: "checkbox"}), "on at once"),
      h("button", {type: "submit"}, "Add rule"));
    add.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = Object.fromEntries(new FormData(add));
      const body = {name: f.name.trim(), fault: f.fault, probability: Number(f.probability), enabled: f.enabled === "on"};
      if (f.model.trim()) body.model = f.model.trim();
      if (f.deployment.trim()) body.deployment = f.deployment.trim();
      try { await api("POST", "/admin/chaos", body); await chaosRules(slot); } catch (e) { status.replaceChildren(errorBox(e)); }
    });
    slot.replaceChildren(status,
      data.rules.length ? h("table", {id: "chaos-table"}, h("thead", {}, h("tr", {}, ...["On", "Rule", "Fault", "Scope", "Probability",
        "Injected", ""].map((c) => h("th", {text: c})))), h("tbody", {}, rows)) : h("p", {class: "muted", text: "No rules."}),
      h("div", {class: "panel"}, h("h2", {text: "New rule"}), add));
  }

  // ---- start -----------------------------------------------------------------------------------------------
  if (sessionStorage.getItem(KEY)) start();
  else logout("");
})();
