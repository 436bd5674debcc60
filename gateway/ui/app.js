// Busgate admin UI: plain JavaScript over the admin API (/admin/v1). No framework, no CDN.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

// ---- token and API -------------------------------------------------------------------------

const TOKEN_KEY = "busgate.admin.token";
/** Keeps the token of a `#token=…` link (as `busgate up` prints it) and takes it off the URL. */
function takeTokenFromUrl() {
  const match = location.hash.match(/token=([^&]+)/);
  if (!match) return false;
  localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + "#services");
  $("#login-error").textContent = "";
  return true;
}
takeTokenFromUrl();

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body, headers = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  // Without a token nothing is asked, and nothing is "refused": the sign-in form shows as is.
  if (!token) {
    showLogin();
    throw new ApiError(401, null);
  }
  const init = { method, headers: { Authorization: `Bearer ${token}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401) {
    // Forget a refused token, so that the periodic status check does not ask with it again.
    localStorage.removeItem(TOKEN_KEY);
    showLogin("The token was refused.");
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, etag: response.headers.get("ETag") };
}

function toast(message, bad = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 3500);
}

// ---- navigation ----------------------------------------------------------------------------

const views = { services: loadServices, routes: loadRoutes, try: loadTry, history: loadHistory };

/** Shows the sign-in form; `message` replaces the one shown (none given: it stays as it is). */
function showLogin(message) {
  $$(".view").forEach((v) => (v.hidden = true));
  $("#login").hidden = false;
  if (message !== undefined) $("#login-error").textContent = message;
}

async function route() {
  const name = (location.hash.replace("#", "") || "services").split("&")[0];
  const view = views[name] ? name : "services";
  if (!localStorage.getItem(TOKEN_KEY)) return showLogin();
  $("#login").hidden = true;
  $$(".view").forEach((v) => (v.hidden = v.id !== `view-${view}`));
  $$("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  try {
    await views[view]();
  } catch (e) {
    if (e.status !== 401) toast(e.message, true);
  }
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  $("#login-error").textContent = "";
  localStorage.setItem(TOKEN_KEY, token);
  route();
  refreshStatus();
});
window.addEventListener("hashchange", () => {
  // The link pasted into a tab that shows the sign-in form changes only the hash.
  const signedIn = takeTokenFromUrl();
  route();
  if (signedIn) refreshStatus();
});

async function refreshStatus() {
  try {
    const { data } = await api("GET", "/admin/v1/status");
    const c = data.config;
    const ok = data.nats === "connected" && c.loaded && !c.last_error;
    $("#version").textContent = `v${data.version}`;
    $("#status").replaceChildren(
      el("span", { class: ok ? "dot" : "dot bad" }),
      `instance ${data.instance} · revision ${c.revision} · ${c.services} services · ${c.routes} routes`,
      c.last_error ? el("span", { title: c.last_error }, " · last change refused") : ""
    );
  } catch (_) {
    /* shown by the views */
  }
}
setInterval(refreshStatus, 5000);
// The services page follows its live instances: a service just created (or an adapter just
// started) shows as live within seconds, without a reload.
setInterval(() => {
  const view = $("#view-services");
  if (view && !view.hidden && !document.hidden) loadServices().catch(() => {});
}, 3000);

// ---- form errors ---------------------------------------------------------------------------

function clearErrors(form) {
  $$(".field-error", form).forEach((e) => (e.textContent = ""));
  $$(".invalid", form).forEach((e) => e.classList.remove("invalid"));
  $$(".form-error", form).forEach((e) => (e.textContent = ""));
}

/** Shows a problem next to the field it names (`routes.x.targets[1].service` → `targets[1].service`). */
function showProblem(form, error, kind, name) {
  const problem = error.problem || {};
  let field = problem.field || "";
  for (const prefix of [`${kind}.${name}.`, `${kind}.${name}`]) {
    if (field.startsWith(prefix)) field = field.slice(prefix.length);
  }
  const input = fieldInput(form, field);
  const message = problem.detail || error.message;
  if (input) {
    input.classList.add("invalid");
    const slot = input.parentElement.querySelector(".field-error");
    if (slot) slot.textContent = message.replace(/^[^:]*: /, "");
    input.focus();
  } else {
    $(".form-error", form).textContent = message;
  }
}

// A field's message goes once the field is changed.
document.addEventListener("input", (ev) => {
  const input = ev.target;
  if (!input.classList || !input.classList.contains("invalid")) return;
  input.classList.remove("invalid");
  const slot = input.parentElement.querySelector(".field-error");
  if (slot) slot.textContent = "";
});

/**
 * The input a problem's field names, or the nearest one above it: `upstream.headers.X-Key.env`
 * falls back to `upstream.headers.X-Key`, then `upstream.headers`, then `upstream`.
 */
function fieldInput(form, field) {
  let f = field;
  while (f) {
    const input = $(`[data-field="${CSS.escape(f)}"]`, form);
    if (input) return input;
    const up = f.replace(/(\.[^.[\]]*|\[[^\]]*\])$/, "");
    if (up === f) break;
    f = up;
  }
  return null;
}

// ---- services ------------------------------------------------------------------------------

let editingService = null;

async function loadServices() {
  const [{ data }, instances, breakers] = await Promise.all([
    api("GET", "/admin/v1/services"),
    api("GET", "/admin/v1/instances").then((r) => r.data.items).catch(() => []),
    breakerStates(),
  ]);
  const tbody = $("#services-table tbody");
  tbody.replaceChildren();
  if (!data.items.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No services yet.")));
  for (const item of data.items) {
    const live = instances.filter((i) => i.service === item.name);
    const modes = [...new Set(live.map((i) => i.mode).filter(Boolean))];
    tbody.append(
      el("tr", { "data-name": item.name },
        el("td", {}, el("strong", {}, item.name)),
        el("td", { class: "mono wrap" }, servedFrom(item, live)),
        el("td", { class: "mono" }, item.spec.timeout || ""),
        el("td", { class: "muted" }, item.spec.description || ""),
        el("td", {}, live.length
          ? el("span", { class: "chip ok", title: modes.join(", ") }, `${live.length} live`, modes.length ? ` · ${modes.join(", ")}` : "")
          : el("span", { class: "chip bad" }, "none")),
        breakerCell(breakers[item.name]),
        el("td", { class: "mono" }, item.revision),
        el("td", { class: "actions" },
          el("button", { class: "ghost small", onclick: () => editService(item) }, "Edit"), " ",
          el("button", { class: "danger small", onclick: () => deleteObject("services", item) }, "Delete"))
      )
    );
  }
}

/**
 * Where a service's answers come from: its configured upstream; else the upstream its live
 * adapters say they call (a single-service `busgate-worker adapter`); else "on NATS" (a native
 * service, or nothing serves it yet).
 */
function servedFrom(item, live) {
  if (item.spec.upstream && item.spec.upstream.url) return item.spec.upstream.url;
  const called = [...new Set(live.map((i) => i.upstream).filter(Boolean))];
  if (called.length) return el("span", { title: "called by its adapter" }, called.join(", "), el("span", { class: "muted" }, " (adapter)"));
  return el("span", { class: "muted" }, "on NATS");
}

function editService(item) {
  editingService = item || null;
  const form = $("#service-form");
  clearErrors(form);
  form.reset();
  $("#service-editor").hidden = false;
  $("#service-editor-title").textContent = item ? `Service ${item.name}` : "New service";
  form.name.value = item ? item.name : "";
  form.name.disabled = !!item;
  form.timeout.value = item ? item.spec.timeout || "" : "800ms";
  form.description.value = item ? item.spec.description || "" : "";
  fillUpstream(form, (item && item.spec.upstream) || null);
  fillReuse(form, item ? item.spec : {});
  fillResilience(form, item && item.spec);
  $("#service-instances").replaceChildren();
  if (item) showInstances(item.name);
  form.name.focus();
}

/** Which instances serve the service right now, how (`mode`) and from where (`upstream`). */
async function showInstances(name) {
  const { data } = await api("GET", `/admin/v1/services/${encodeURIComponent(name)}/instances`);
  const rows = data.items.map((i) =>
    el("tr", { "data-instance": i.id },
      el("td", { class: "mono wrap" }, i.id),
      el("td", { class: "mode" }, i.mode ? el("span", { class: "chip" }, i.mode) : el("span", { class: "muted" }, "—")),
      el("td", { class: "mono wrap upstream" }, i.upstream || el("span", { class: "muted" }, "—")),
      el("td", {}, i.version),
      el("td", { class: "num" }, i.requests),
      el("td", { class: "num" }, i.errors),
      el("td", { class: "num" }, `${i.average_ms.toFixed(2)} ms`))
  );
  $("#service-instances").replaceChildren(
    el("h3", { id: "instances-title" }, "Live instances"),
    el("div", { class: "table-scroll" },
      el("table", { class: "list instances", "aria-labelledby": "instances-title" },
        el("thead", {}, el("tr", {}, ["Id", "Mode", "Upstream", "Version", "Requests", "Errors", "Avg time"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No instance is running.")))))
  );
}

// ---- services: cache and coalescing --------------------------------------------------------

/** The cache fields and the coalescing box from a service's spec. */
function fillReuse(form, spec) {
  const c = spec.cache || {};
  form.cache_ttl.value = c.ttl || "";
  form.cache_swr.value = c.stale_while_revalidate || "";
  form.cache_sie.value = c.stale_if_error || "";
  form.cache_max_entries.value = c.max_entries ?? "";
  form.cache_max_bytes.value = c.max_bytes ?? "";
  form.cache_shared.checked = !!c.shared;
  form.coalesce.checked = spec.coalesce !== false;
}

/** Adds `cache` (when a ttl is given) and `coalesce: false` (when unchecked) to `spec`. */
function reuseFromForm(form, spec) {
  const ttl = form.cache_ttl.value.trim();
  if (ttl) {
    const cache = { ttl };
    if (form.cache_swr.value.trim()) cache.stale_while_revalidate = form.cache_swr.value.trim();
    if (form.cache_sie.value.trim()) cache.stale_if_error = form.cache_sie.value.trim();
    const number = (v) => (/^\d+$/.test(v) ? Number(v) : v);
    if (form.cache_max_entries.value.trim()) cache.max_entries = number(form.cache_max_entries.value.trim());
    if (form.cache_max_bytes.value.trim()) cache.max_bytes = number(form.cache_max_bytes.value.trim());
    if (form.cache_shared.checked) cache.shared = true;
    spec.cache = cache;
  }
  if (!form.coalesce.checked) spec.coalesce = false;
}

// ---- services: the upstream ----------------------------------------------------------------

/** One header of the upstream: its name, where its value comes from (env or file), and which. */
function headerRow(name, source) {
  const kind = source && source.file !== undefined ? "file" : "env";
  const value = (source && (source.file ?? source.env)) || "";
  const row = el("div", { class: "row header" },
    el("div", { class: "row-head" },
      el("label", {}, "Header name",
        el("input", { name: "header_name", value: name || "", placeholder: "X-Api-Key", spellcheck: "false", autocomplete: "off" }),
        el("small", { class: "field-error" })),
      el("label", {}, "Value from",
        el("select", { name: "header_source" },
          el("option", { value: "env", selected: kind === "env" }, "environment variable"),
          el("option", { value: "file", selected: kind === "file" }, "file")),
        el("small", { class: "field-error" })),
      el("label", {}, "Variable or file",
        el("input", { name: "header_value", value, placeholder: kind === "file" ? "/run/secrets/billing_key" : "BILLING_KEY", spellcheck: "false", autocomplete: "off" }),
        el("small", { class: "field-error" })),
      el("button", { type: "button", class: "danger small", "aria-label": "Remove this header", onclick: (ev) => ev.target.closest(".row").remove() }, "Remove")));
  const sync = () => {
    const n = $("[name=header_name]", row).value.trim();
    const k = $("[name=header_source]", row).value;
    // The paths the gateway names in its refusals: the header, and its source's value.
    $("[name=header_name]", row).dataset.field = `upstream.headers.${n}`;
    $("[name=header_value]", row).dataset.field = `upstream.headers.${n}.${k}`;
    $("[name=header_value]", row).placeholder = k === "file" ? "/run/secrets/billing_key" : "BILLING_KEY";
  };
  row.addEventListener("input", sync);
  row.addEventListener("change", sync);
  sync();
  return row;
}

function fillUpstream(form, upstream) {
  const u = upstream || {};
  form.upstream_url.value = u.url || "";
  form.upstream_timeout.value = u.timeout || "";
  form.upstream_concurrency.value = u.concurrency ?? "";
  $("#upstream-headers").replaceChildren(...Object.entries(u.headers || {}).map(([n, src]) => headerRow(n, src)));
}

/** The upstream the form describes, or undefined when its URL is empty. */
function upstreamFromForm(form) {
  const url = form.upstream_url.value.trim();
  if (!url) return undefined;
  const upstream = { url };
  if (form.upstream_timeout.value.trim()) upstream.timeout = form.upstream_timeout.value.trim();
  const concurrency = form.upstream_concurrency.value.trim();
  // A number when it reads as one; otherwise as typed, for the server to name the field.
  if (concurrency) upstream.concurrency = /^\d+$/.test(concurrency) ? Number(concurrency) : concurrency;
  const headers = {};
  for (const row of $$("#upstream-headers .header")) {
    const name = $("[name=header_name]", row).value.trim();
    const value = $("[name=header_value]", row).value.trim();
    if (!name && !value) continue;
    headers[name] = { [$("[name=header_source]", row).value]: value };
  }
  if (Object.keys(headers).length) upstream.headers = headers;
  return upstream;
}

$("#add-header").addEventListener("click", () => {
  const row = headerRow("", null);
  $("#upstream-headers").append(row);
  $("[name=header_name]", row).focus();
});

$("#new-service").addEventListener("click", () => editService(null));
$("#service-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const spec = { timeout: form.timeout.value.trim() };
  if (form.description.value.trim()) spec.description = form.description.value.trim();
  const upstream = upstreamFromForm(form);
  if (upstream) spec.upstream = upstream;
  reuseFromForm(form, spec);
  Object.assign(spec, resilienceFromForm(form));
  const name = form.name.value.trim();
  try {
    if (editingService) {
      await api("PUT", `/admin/v1/services/${name}`, spec, { "If-Match": `"${editingService.revision}"` });
    } else {
      await api("POST", "/admin/v1/services", { name, spec });
    }
    $("#service-editor").hidden = true;
    toast(`Service ${name} saved`);
    await loadServices();
    refreshStatus();
  } catch (e) {
    showProblem(form, e, "services", name);
  }
});

// ---- routes --------------------------------------------------------------------------------

let editingRoute = null;
let knownServices = [];

async function loadRoutes() {
  const [{ data }, services] = await Promise.all([api("GET", "/admin/v1/routes"), api("GET", "/admin/v1/services")]);
  knownServices = services.data.items.map((s) => s.name);
  const tbody = $("#routes-table tbody");
  tbody.replaceChildren();
  if (!data.items.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No routes yet.")));
  for (const item of data.items) {
    const s = item.spec;
    tbody.append(
      el("tr", { "data-name": item.name },
        el("td", {}, el("strong", {}, item.name)),
        el("td", { class: "mono" }, s.bindings.map((b) => el("div", {}, `${b.method} ${b.path}`))),
        el("td", {}, s.targets.map((t) =>
          el("span", { class: t.required === false ? "chip opt" : "chip ok", title: t.when ? JSON.stringify(t.when) : "" },
            (t.as ? `${t.as} = ${t.service}` : t.service) + (t.needs ? ` ← ${t.needs.join(", ")}` : "") +
              (t.required === false ? " (optional)" : "") + (t.when ? " ⚑" : "")))),
        el("td", {}, (s.merge && s.merge.strategy) || "namespace"),
        el("td", { class: "mono" }, s.deadline || "1s"),
        el("td", { class: "mono" }, item.revision),
        el("td", { class: "actions" },
          el("button", { class: "ghost small", onclick: () => editRoute(item) }, "Edit"), " ",
          el("button", { class: "danger small", onclick: () => deleteObject("routes", item) }, "Delete"))
      )
    );
  }
}

function bindingRow(b, i) {
  return el("div", { class: "row binding" },
    el("div", { class: "row-head" },
      el("label", {}, "Method",
        el("select", { name: "method", "data-field": `bindings[${i}].method` },
          ["GET", "POST"].map((m) => el("option", { value: m, selected: b.method === m }, m))),
        el("small", { class: "field-error" })),
      el("label", {}, "Path", el("input", { name: "path", value: b.path || "", placeholder: "/api/orders/{order_id}", "data-field": `bindings[${i}].path` }),
        el("small", { class: "field-error" })),
      el("button", { type: "button", class: "danger small", onclick: (ev) => ev.target.closest(".row").remove() }, "Remove")));
}

function targetRow(t, i) {
  const w = t.when || {};
  const serviceSelect = el("select", { name: "service", "data-field": `targets[${i}].service` },
    el("option", { value: "" }, "— service —"),
    [...new Set([...knownServices, t.service].filter(Boolean))].map((s) => el("option", { value: s, selected: t.service === s }, s)));
  return el("div", { class: "row target" },
    el("div", { class: "row-head" },
      el("label", {}, "Service", serviceSelect, el("small", { class: "field-error" })),
      el("label", {}, "Timeout", el("input", { name: "timeout", value: t.timeout || "", placeholder: "service default", "data-field": `targets[${i}].timeout` }),
        el("small", { class: "field-error" })),
      el("label", { class: "check" }, el("input", { type: "checkbox", name: "required", checked: t.required !== false }), "required"),
      el("button", { type: "button", class: "danger small", onclick: (ev) => ev.target.closest(".row").remove() }, "Remove")),
    el("details", { open: !!(t.when || t.allow || t.deny || t.rename || t.needs || t.with || t.as) },
      el("summary", {}, "Conditions and transforms"),
      el("div", { class: "grid" },
        el("label", {}, "Header name", el("input", { name: "header_name", value: (w.header && w.header.name) || "", "data-field": `targets[${i}].when.header.name` }), el("small", { class: "field-error" })),
        el("label", {}, "Header equals", el("input", { name: "header_equals", value: (w.header && w.header.equals) || "" })),
        el("label", {}, "order_id matches", el("input", { name: "order_id_matches", value: w.order_id_matches || "", placeholder: "^VIP-", "data-field": `targets[${i}].when.order_id_matches` }), el("small", { class: "field-error" })),
        el("label", {}, "Share of orders (%)", el("input", { name: "percent", type: "number", min: 0, max: 100, step: "any", value: w.percent ?? "", "data-field": `targets[${i}].when.percent` }), el("small", { class: "field-error" })),
        el("label", {}, "Clients (comma separated)", el("input", { name: "clients", value: (w.clients || []).join(", ") })),
        el("label", {}, "Allow fields", el("input", { name: "allow", value: (t.allow || []).join(", "), "data-field": `targets[${i}].allow` }), el("small", { class: "field-error" })),
        el("label", {}, "Deny fields", el("input", { name: "deny", value: (t.deny || []).join(", "), "data-field": `targets[${i}].deny` }), el("small", { class: "field-error" })),
        el("label", {}, "Rename (from=to, …)", el("input", { name: "rename", value: Object.entries(t.rename || {}).map(([a, b]) => `${a}=${b}`).join(", ") })),
        graphFields(t, i))));
}

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

function renumber() {
  $$("#bindings .binding").forEach((row, i) => $$("[data-field]", row).forEach((f) => (f.dataset.field = f.dataset.field.replace(/^bindings\[\d+\]/, `bindings[${i}]`))));
  $$("#targets .target").forEach((row, i) => $$("[data-field]", row).forEach((f) => (f.dataset.field = f.dataset.field.replace(/^targets\[\d+\]/, `targets[${i}]`))));
}

function routeSpecFromForm(form) {
  renumber();
  const spec = { bindings: [], targets: [] };
  if (form.deadline.value.trim()) spec.deadline = form.deadline.value.trim();
  for (const row of $$("#bindings .binding")) {
    spec.bindings.push({ method: $("[name=method]", row).value, path: $("[name=path]", row).value.trim() });
  }
  for (const row of $$("#targets .target")) {
    const v = (n) => $(`[name=${n}]`, row).value.trim();
    const t = { service: v("service"), required: $("[name=required]", row).checked };
    if (v("timeout")) t.timeout = v("timeout");
    const when = {};
    if (v("header_name")) when.header = { name: v("header_name"), equals: v("header_equals") };
    if (v("order_id_matches")) when.order_id_matches = v("order_id_matches");
    if (v("percent") !== "") when.percent = Number(v("percent"));
    if (v("clients")) when.clients = list(v("clients"));
    graphFromRow(row, t, when);
    if (Object.keys(when).length) t.when = when;
    if (v("allow")) t.allow = list(v("allow"));
    if (v("deny")) t.deny = list(v("deny"));
    if (v("rename")) t.rename = Object.fromEntries(list(v("rename")).map((p) => p.split("=").map((s) => s.trim())));
    spec.targets.push(t);
  }
  if (form.late_grace.value.trim()) spec.late = { grace: form.late_grace.value.trim() };
  spec.merge = { strategy: form.strategy.value };
  if (form.priority.value.trim()) spec.merge.priority = list(form.priority.value);
  return spec;
}

async function editRoute(item) {
  if (!knownServices.length) knownServices = (await api("GET", "/admin/v1/services")).data.items.map((s) => s.name);
  editingRoute = item || null;
  const form = $("#route-form");
  clearErrors(form);
  form.reset();
  const spec = item ? item.spec : {
    bindings: [{ method: "GET", path: "/api/NAME/{order_id}" }],
    targets: [{ service: knownServices[0] || "", required: true }],
  };
  $("#route-editor").hidden = false;
  $("#route-editor-title").textContent = item ? `Route ${item.name}` : "New route";
  form.name.value = item ? item.name : "";
  form.name.disabled = !!item;
  form.deadline.value = spec.deadline || "1s";
  form.late_grace.value = (spec.late && spec.late.grace) || "";
  form.strategy.value = (spec.merge && spec.merge.strategy) || "namespace";
  form.priority.value = ((spec.merge && spec.merge.priority) || []).join(", ");
  $("#bindings").replaceChildren(...spec.bindings.map(bindingRow));
  $("#targets").replaceChildren(...spec.targets.map(targetRow));
  renderStages();
  $("#route-editor").scrollIntoView({ behavior: "smooth", block: "start" });
}

$("#new-route").addEventListener("click", () => editRoute(null));
$("#add-binding").addEventListener("click", () => $("#bindings").append(bindingRow({ method: "GET", path: "" }, $$("#bindings .binding").length)));
$("#add-target").addEventListener("click", () => $("#targets").append(targetRow({ service: "", required: false }, $$("#targets .target").length)));
$("#route-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const name = form.name.value.trim();
  const spec = routeSpecFromForm(form);
  try {
    if (editingRoute) {
      await api("PUT", `/admin/v1/routes/${name}`, spec, { "If-Match": `"${editingRoute.revision}"` });
    } else {
      await api("POST", "/admin/v1/routes", { name, spec });
    }
    $("#route-editor").hidden = true;
    toast(`Route ${name} saved`);
    await loadRoutes();
    refreshStatus();
  } catch (e) {
    showProblem(form, e, "routes", name);
  }
});

$$("[data-close]").forEach((b) => b.addEventListener("click", (ev) => (ev.target.closest(".card").hidden = true)));

async function deleteObject(kind, item) {
  if (!confirm(`Delete ${kind.slice(0, -1)} ${item.name}?`)) return;
  try {
    await api("DELETE", `/admin/v1/${kind}/${item.name}`, undefined, { "If-Match": `"${item.revision}"` });
    toast(`${item.name} deleted`);
  } catch (e) {
    toast(e.message, true);
  }
  route();
}

// ---- try it --------------------------------------------------------------------------------

async function loadTry() {
  const { data } = await api("GET", "/admin/v1/routes");
  const select = $("#try-route");
  const current = select.value;
  // The first time, the `order` route (the one the demo and the guides use) when there is one.
  const chosen = current || (data.items.some((r) => r.name === "order") ? "order" : "");
  select.replaceChildren(...data.items.map((r) => el("option", { value: r.name, selected: r.name === chosen }, r.name)));
}

const statusClass = (s) => (s === "ok" || s === "skipped" ? "ok" : s === "timeout" || s === "cancelled" || s === "not_found" ? "warn" : "bad");

$("#try-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const out = $("#try-result");
  out.replaceChildren(el("p", { class: "muted" }, "Sending…"));
  try {
    const { data } = await api("POST", "/admin/v1/try", { route: form.route.value, order_id: form.order_id.value.trim(), client: form.client ? form.client.value : "" });
    const body = data.body || {};
    const sources = body.sources || {};
    out.replaceChildren(
      el("div", { class: "card" },
        el("div", { class: "answer-head" },
          el("span", { class: `big-status ${data.status === 200 ? "" : "error"}` }, data.status),
          data.status === 200
            ? el("span", { class: body.complete ? "chip ok" : "chip warn" }, body.complete ? "complete" : "incomplete")
            : el("span", { class: "chip bad" }, body.title || "error"),
          body.elapsed_ms !== undefined ? el("span", { class: "muted" }, `${body.elapsed_ms} ms`) : ""),
        el("div", { class: "sources" },
          Object.entries(sources).map(([name, s]) =>
            el("div", { class: "source", "data-source": name },
              el("h4", {}, name, el("span", { class: `chip ${statusClass(s.status)}` }, s.status)),
              el("div", { class: "muted" }, s.elapsed_ms !== undefined ? `${s.elapsed_ms} ms` : "—", s.optional ? " · optional" : " · required", s.reason ? ` · ${s.reason}` : "",
                s.cache ? ` · cache ${s.cache}` : "", s.coalesced ? " · coalesced" : ""),
              s.error ? el("div", { class: "error" }, `${s.error.code}: ${s.error.message}`) : ""))),
        waterfall(body),
        el("pre", { class: "json" }, JSON.stringify(body, null, 2))));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, e.message));
  }
});

// ---- history -------------------------------------------------------------------------------

async function loadHistory() {
  const [services, routes] = await Promise.all([api("GET", "/admin/v1/services"), api("GET", "/admin/v1/routes")]);
  const select = $("#history-object");
  const current = select.value;
  const options = [
    ...routes.data.items.map((r) => ({ value: `routes/${r.name}`, label: `route ${r.name}` })),
    ...services.data.items.map((s) => ({ value: `services/${s.name}`, label: `service ${s.name}` })),
  ];
  select.replaceChildren(...options.map((o) => el("option", { value: o.value, selected: o.value === current }, o.label)));
  await showHistory();
}

let historyItems = [];
/** The latest call of showHistory: an earlier one whose answers arrive later shows nothing. */
let historyShown = 0;

async function showHistory() {
  const call = ++historyShown;
  const path = $("#history-object").value;
  const tbody = $("#history-table tbody");
  if (!path) {
    historyItems = [];
    fillDiffChoices();
    return tbody.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "Nothing to show.")));
  }
  const [{ data }, currentObject] = await Promise.all([api("GET", `/admin/v1/${path}/history`), api("GET", `/admin/v1/${path}`).catch(() => null)]);
  // Another object was chosen while these were on their way (opening the view shows the last
  // one chosen, and the user may choose again before its answers arrive).
  if (call !== historyShown) return;
  const currentRevision = currentObject ? currentObject.data.revision : null;
  historyItems = data.items;
  fillDiffChoices();
  tbody.replaceChildren(
    ...data.items.slice().reverse().map((r) =>
      el("tr", { "data-revision": r.revision },
        el("td", { class: "mono" }, r.revision, r.revision === currentRevision ? el("span", { class: "chip ok" }, "current") : ""),
        el("td", {}, r.operation),
        el("td", { class: "muted" }, new Date(r.created).toLocaleString()),
        el("td", { class: "actions" },
          r.revision !== data.items[0].revision
            ? el("button", { class: "ghost small", "aria-label": `Changes in revision ${r.revision}`, onclick: () => compareWithPrevious(r.revision) }, "Changes")
            : "", " ",
          r.operation === "put" && r.revision !== currentRevision && currentRevision !== null
            ? el("button", { class: "ghost small", onclick: () => rollback(path, r.revision, currentRevision) }, "Roll back to this")
            : "")))
  );
}

// ---- history: the difference between two revisions -----------------------------------------

/** Offers every kept revision in both choices: by default the one before the latest, and the latest. */
function fillDiffChoices() {
  const options = (selected) => historyItems.map((r) =>
    el("option", { value: r.revision, selected: r.revision === selected }, `${r.revision} · ${r.operation} · ${new Date(r.created).toLocaleString()}`));
  const n = historyItems.length;
  const to = n ? historyItems[n - 1].revision : null;
  const from = n > 1 ? historyItems[n - 2].revision : to;
  $("#diff-from").replaceChildren(...options(from));
  $("#diff-to").replaceChildren(...options(to));
  showDiff();
}

/** Shows what `revision` changed: the difference from the revision before it. */
function compareWithPrevious(revision) {
  const i = historyItems.findIndex((r) => r.revision === revision);
  if (i < 1) return;
  $("#diff-to").value = String(revision);
  $("#diff-from").value = String(historyItems[i - 1].revision);
  showDiff();
  $("#history-diff").scrollIntoView({ behavior: "smooth", block: "start" });
}

/**
 * Leaf values of a document by JSON path (`targets[1].timeout`); an empty object or list is a
 * leaf of its own, so that adding one shows.
 */
function flatten(value, path = "", out = new Map()) {
  const isObject = value !== null && typeof value === "object";
  if (isObject && Object.keys(value).length) {
    for (const [k, v] of Object.entries(value)) {
      const key = Array.isArray(value) ? `${path}[${k}]` : /^[A-Za-z_][\w-]*$/.test(k) ? (path ? `${path}.${k}` : k) : `${path}[${JSON.stringify(k)}]`;
      flatten(v, key, out);
    }
  } else if (value !== undefined) {
    out.set(path || "(document)", value);
  }
  return out;
}

/** What changed from `a` to `b`, path by path, in document order: added, removed, changed. */
function diffDocuments(a, b) {
  const before = flatten(a ?? {});
  const after = flatten(b ?? {});
  const changes = [];
  for (const path of new Set([...before.keys(), ...after.keys()])) {
    const had = before.has(path);
    const has = after.has(path);
    const was = JSON.stringify(before.get(path));
    const is = JSON.stringify(after.get(path));
    if (had && has && was === is) continue;
    changes.push({ path, kind: !had ? "added" : !has ? "removed" : "changed", was, is });
  }
  return changes;
}

function showDiff() {
  const body = $("#diff-body");
  const from = historyItems.find((r) => String(r.revision) === $("#diff-from").value);
  const to = historyItems.find((r) => String(r.revision) === $("#diff-to").value);
  if (!from || !to) return body.replaceChildren(el("p", { class: "muted" }, "No revisions to compare."));
  if (from.revision === to.revision) return body.replaceChildren(el("p", { class: "muted" }, "Choose two different revisions."));
  const changes = diffDocuments(from.operation === "delete" ? null : from.spec, to.operation === "delete" ? null : to.spec);
  const title = el("p", { class: "muted" }, `From revision ${from.revision} (${from.operation}) to revision ${to.revision} (${to.operation}): `,
    changes.length ? `${changes.length} change${changes.length > 1 ? "s" : ""}` : "no change");
  if (!changes.length) return body.replaceChildren(title);
  const mark = { added: "+", removed: "−", changed: "~" };
  body.replaceChildren(title,
    el("table", { class: "list diff" },
      el("thead", {}, el("tr", {}, el("th", {}, "Field"), el("th", {}, "Before"), el("th", {}, "After"))),
      el("tbody", {}, changes.map((c) =>
        el("tr", { class: `diff-${c.kind}`, "data-path": c.path },
          el("td", { class: "mono wrap" }, el("span", { class: "diff-mark", title: c.kind, "aria-label": c.kind }, mark[c.kind]), " ", c.path),
          el("td", { class: "mono wrap before" }, c.kind === "added" ? "" : c.was),
          el("td", { class: "mono wrap after" }, c.kind === "removed" ? "" : c.is))))));
}

$("#diff-from").addEventListener("change", showDiff);
$("#diff-to").addEventListener("change", showDiff);

async function rollback(path, revision, current) {
  try {
    await api("POST", `/admin/v1/${path}/rollback`, { revision }, { "If-Match": `"${current}"` });
    toast(`Rolled back to revision ${revision}`);
    refreshStatus();
  } catch (e) {
    toast(e.message, true);
  }
  await showHistory();
}

$("#history-object").addEventListener("change", showHistory);

route();
refreshStatus();
