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
(function takeTokenFromUrl() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + "#services");
  }
})();

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401) {
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

function showLogin(message) {
  $$(".view").forEach((v) => (v.hidden = true));
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
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
  localStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  route();
  refreshStatus();
});
window.addEventListener("hashchange", route);

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
  const input = field && $(`[data-field="${CSS.escape(field)}"]`, form);
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

// ---- services ------------------------------------------------------------------------------

let editingService = null;

async function loadServices() {
  const [{ data }, instances] = await Promise.all([
    api("GET", "/admin/v1/services"),
    api("GET", "/admin/v1/instances").then((r) => r.data.items).catch(() => []),
  ]);
  const tbody = $("#services-table tbody");
  tbody.replaceChildren();
  if (!data.items.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No services yet.")));
  for (const item of data.items) {
    const live = instances.filter((i) => i.service === item.name);
    tbody.append(
      el("tr", { "data-name": item.name },
        el("td", {}, el("strong", {}, item.name)),
        el("td", { class: "mono" }, item.spec.timeout || ""),
        el("td", { class: "muted" }, item.spec.description || ""),
        el("td", {}, live.length
          ? el("span", { class: "chip ok" }, `${live.length} live`)
          : el("span", { class: "chip bad" }, "none")),
        el("td", { class: "mono" }, item.revision),
        el("td", { class: "actions" },
          el("button", { class: "ghost small", onclick: () => editService(item) }, "Edit"), " ",
          el("button", { class: "danger small", onclick: () => deleteObject("services", item) }, "Delete"))
      )
    );
  }
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
  $("#service-instances").replaceChildren();
  if (item) showInstances(item.name);
  form.name.focus();
}

async function showInstances(name) {
  const { data } = await api("GET", `/admin/v1/services/${encodeURIComponent(name)}/instances`);
  const rows = data.items.map((i) =>
    el("tr", {},
      el("td", { class: "mono" }, i.id),
      el("td", {}, (i.metadata && i.metadata.kind) || ""),
      el("td", { class: "mono muted" }, (i.metadata && i.metadata.upstream) || ""),
      el("td", {}, i.version),
      el("td", {}, i.requests),
      el("td", {}, i.errors),
      el("td", {}, `${i.average_ms.toFixed(2)} ms`))
  );
  $("#service-instances").replaceChildren(
    el("h3", {}, "Live instances"),
    el("table", { class: "list instances" },
      el("thead", {}, el("tr", {}, ["Id", "Kind", "Upstream", "Version", "Requests", "Errors", "Avg time"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No instance is running."))))
  );
}

$("#new-service").addEventListener("click", () => editService(null));
$("#service-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const spec = { timeout: form.timeout.value.trim() };
  if (form.description.value.trim()) spec.description = form.description.value.trim();
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
            t.service + (t.required === false ? " (optional)" : "") + (t.when ? " ⚑" : "")))),
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
    el("details", { open: !!(t.when || t.allow || t.deny || t.rename) },
      el("summary", {}, "Conditions and transforms"),
      el("div", { class: "grid" },
        el("label", {}, "Header name", el("input", { name: "header_name", value: (w.header && w.header.name) || "", "data-field": `targets[${i}].when.header.name` }), el("small", { class: "field-error" })),
        el("label", {}, "Header equals", el("input", { name: "header_equals", value: (w.header && w.header.equals) || "" })),
        el("label", {}, "order_id matches", el("input", { name: "order_id_matches", value: w.order_id_matches || "", placeholder: "^VIP-", "data-field": `targets[${i}].when.order_id_matches` }), el("small", { class: "field-error" })),
        el("label", {}, "Share of orders (%)", el("input", { name: "percent", type: "number", min: 0, max: 100, step: "any", value: w.percent ?? "", "data-field": `targets[${i}].when.percent` }), el("small", { class: "field-error" })),
        el("label", {}, "Clients (comma separated)", el("input", { name: "clients", value: (w.clients || []).join(", ") })),
        el("label", {}, "Allow fields", el("input", { name: "allow", value: (t.allow || []).join(", "), "data-field": `targets[${i}].allow` }), el("small", { class: "field-error" })),
        el("label", {}, "Deny fields", el("input", { name: "deny", value: (t.deny || []).join(", "), "data-field": `targets[${i}].deny` }), el("small", { class: "field-error" })),
        el("label", {}, "Rename (from=to, …)", el("input", { name: "rename", value: Object.entries(t.rename || {}).map(([a, b]) => `${a}=${b}`).join(", ") })))));
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
    if (Object.keys(when).length) t.when = when;
    if (v("allow")) t.allow = list(v("allow"));
    if (v("deny")) t.deny = list(v("deny"));
    if (v("rename")) t.rename = Object.fromEntries(list(v("rename")).map((p) => p.split("=").map((s) => s.trim())));
    spec.targets.push(t);
  }
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
  form.strategy.value = (spec.merge && spec.merge.strategy) || "namespace";
  form.priority.value = ((spec.merge && spec.merge.priority) || []).join(", ");
  $("#bindings").replaceChildren(...spec.bindings.map(bindingRow));
  $("#targets").replaceChildren(...spec.targets.map(targetRow));
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
  select.replaceChildren(...data.items.map((r) => el("option", { value: r.name, selected: r.name === current }, r.name)));
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
              el("div", { class: "muted" }, s.elapsed_ms !== undefined ? `${s.elapsed_ms} ms` : "—", s.optional ? " · optional" : " · required"),
              s.error ? el("div", { class: "error" }, `${s.error.code}: ${s.error.message}`) : ""))),
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

async function showHistory() {
  const path = $("#history-object").value;
  const tbody = $("#history-table tbody");
  if (!path) return tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "Nothing to show.")));
  const [{ data }, currentObject] = await Promise.all([api("GET", `/admin/v1/${path}/history`), api("GET", `/admin/v1/${path}`).catch(() => null)]);
  const currentRevision = currentObject ? currentObject.data.revision : null;
  tbody.replaceChildren(
    ...data.items.slice().reverse().map((r) =>
      el("tr", { "data-revision": r.revision },
        el("td", { class: "mono" }, r.revision, r.revision === currentRevision ? el("span", { class: "chip ok" }, "current") : ""),
        el("td", {}, r.operation),
        el("td", { class: "muted" }, new Date(r.created).toLocaleString()),
        el("td", {}, el("pre", { class: "json" }, JSON.stringify(r.spec, null, 1))),
        el("td", { class: "actions" },
          r.operation === "put" && r.revision !== currentRevision && currentRevision !== null
            ? el("button", { class: "ghost small", onclick: () => rollback(path, r.revision, currentRevision) }, "Roll back to this")
            : "")))
  );
}

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
