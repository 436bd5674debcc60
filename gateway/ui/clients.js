// Busgate admin UI: the Clients page (clients of the public API, their keys and limits), and
// the try-it's "as client" selector. Loaded after app.js, whose helpers it uses ($, el, api,
// toast, clearErrors, showProblem, deleteObject, views, route).
"use strict";

let editingClient = null;

/** The page's markup, made once into the (empty) section of index.html. */
function clientsPage() {
  const section = $("#view-clients");
  if (section.childElementCount) return;
  const field = (label, name, attrs = {}) =>
    el("label", {}, label, el("input", { name, "data-field": name, ...attrs }), el("small", { class: "field-error" }));
  section.append(
    el("div", { class: "view-head" },
      el("h1", {}, "Clients"),
      el("button", { class: "primary", id: "new-client", onclick: () => editClient(null) }, "New client")),
    el("p", { class: "muted" },
      "Who may call the public API: each client has API keys (shown once, stored as hashes), the routes it may use and its limits. ",
      "Limits hold per gateway instance."),
    el("div", { id: "client-secret", class: "card secret", hidden: true }),
    el("table", { class: "list", id: "clients-table" },
      el("thead", {}, el("tr", {},
        ["Name", "Description", "Routes", "Rate", "Pending", "Streams", "Keys", "Revision", ""].map((h) => el("th", {}, h)))),
      el("tbody")),
    el("div", { id: "client-editor", class: "card", hidden: true },
      el("h2", { id: "client-editor-title" }, "New client"),
      el("form", { id: "client-form", novalidate: true, onsubmit: saveClient },
        el("div", { class: "grid" },
          field("Name", "name", { placeholder: "acme", required: true }),
          field("Routes (comma-separated; empty: all)", "routes", { placeholder: "order" })),
        field("Description", "description", { placeholder: "Who this is" }),
        el("div", { class: "grid" },
          field("Rate per second (empty: none)", "rate.per_second", { type: "number", min: 1 }),
          field("Burst", "rate.burst", { type: "number", min: 1 }),
          field("Max pending", "max_pending", { type: "number", min: 1 }),
          field("Max streams", "max_streams", { type: "number", min: 1 })),
        el("p", { class: "error form-error" }),
        el("div", { class: "actions" },
          el("button", { type: "button", class: "ghost", onclick: () => ($("#client-editor").hidden = true) }, "Cancel"),
          el("button", { class: "primary" }, "Save"))),
      el("div", { id: "client-keys" })));
}

const number = (v) => (v === "" || v === undefined ? undefined : Number(v));

/** The spec the form describes (keys are never sent: they have endpoints of their own). */
function clientSpecFromForm(form) {
  const value = (n) => form.querySelector(`[name="${n}"]`).value.trim();
  const spec = {};
  if (value("description")) spec.description = value("description");
  const routes = value("routes").split(",").map((s) => s.trim()).filter(Boolean);
  if (routes.length) spec.routes = routes;
  const perSecond = number(value("rate.per_second"));
  if (perSecond !== undefined) {
    spec.rate = { per_second: perSecond };
    const burst = number(value("rate.burst"));
    if (burst !== undefined) spec.rate.burst = burst;
  }
  for (const n of ["max_pending", "max_streams"]) {
    const v = number(value(n));
    if (v !== undefined) spec[n] = v;
  }
  return spec;
}

async function loadClients() {
  clientsPage();
  const { data } = await api("GET", "/admin/v1/clients");
  const tbody = $("#clients-table tbody");
  tbody.replaceChildren();
  if (!data.items.length) tbody.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No clients yet.")));
  for (const item of data.items) {
    const s = item.spec;
    tbody.append(
      el("tr", { "data-name": item.name },
        el("td", {}, el("strong", {}, item.name)),
        el("td", { class: "muted" }, s.description || ""),
        el("td", {}, (s.routes || []).length ? s.routes.join(", ") : el("span", { class: "muted" }, "all")),
        el("td", { class: "mono" }, s.rate ? `${s.rate.per_second}/s, burst ${s.rate.burst ?? s.rate.per_second}` : "—"),
        el("td", { class: "mono" }, s.max_pending ?? "—"),
        el("td", { class: "mono" }, s.max_streams ?? "—"),
        el("td", { class: "mono keys" }, (s.keys || []).length),
        el("td", { class: "mono" }, item.revision),
        el("td", { class: "actions" },
          el("button", { class: "ghost small", onclick: () => editClient(item) }, "Edit"), " ",
          el("button", { class: "danger small", onclick: () => deleteObject("clients", item) }, "Delete"))));
  }
  if (editingClient) {
    const fresh = data.items.find((i) => i.name === editingClient.name);
    if (fresh) editClient(fresh, true);
  }
}

function editClient(item, keepSecret = false) {
  editingClient = item || null;
  const form = $("#client-form");
  clearErrors(form);
  if (!keepSecret) $("#client-secret").hidden = true;
  const s = (item && item.spec) || {};
  const set = (n, v) => (form.querySelector(`[name="${n}"]`).value = v ?? "");
  set("name", item ? item.name : "");
  form.querySelector("[name=name]").disabled = !!item;
  set("description", s.description);
  set("routes", (s.routes || []).join(", "));
  set("rate.per_second", s.rate && s.rate.per_second);
  set("rate.burst", s.rate && s.rate.burst);
  set("max_pending", s.max_pending);
  set("max_streams", s.max_streams);
  $("#client-editor-title").textContent = item ? `Client ${item.name}` : "New client";
  $("#client-editor").hidden = false;
  showKeys(item);
}

/** The client's keys: ids and dates only (the gateway has no secret to show), with Revoke. */
function showKeys(item) {
  const box = $("#client-keys");
  if (!item) return box.replaceChildren();
  const keys = item.spec.keys || [];
  box.replaceChildren(
    el("h3", {}, "API keys"),
    el("table", { class: "list", id: "keys-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Id"), el("th", {}, "Created"), el("th", {}, ""))),
      el("tbody", {}, keys.length
        ? keys.map((k) => el("tr", { "data-key": k.id },
            el("td", { class: "mono" }, k.id),
            el("td", { class: "muted" }, k.created ? new Date(k.created).toLocaleString() : ""),
            el("td", { class: "actions" }, el("button", { class: "danger small", onclick: () => revokeKey(item, k.id) }, "Revoke"))))
        : el("tr", {}, el("td", { colspan: 3, class: "empty" }, "No live key: this client cannot call the API.")))),
    el("button", { class: "ghost small", id: "add-key", onclick: () => addKey(item) }, "+ key"));
}

/** Shows a secret once, with a copy button; it is in no other answer and nowhere stored. */
function showSecret(client, id, secret) {
  const box = $("#client-secret");
  const input = el("input", { class: "mono", id: "secret-value", readonly: true, value: secret, size: 60 });
  box.replaceChildren(
    el("h3", {}, `Key ${id} of ${client}`),
    el("p", { class: "muted" }, "Copy it now: it is shown this once. Clients send it as Authorization: Bearer <key> or X-API-Key: <key>."),
    el("div", { class: "inline" },
      input,
      el("button", { class: "primary small", id: "copy-secret", onclick: async () => {
        input.select();
        try {
          await navigator.clipboard.writeText(secret);
        } catch (_) {
          document.execCommand("copy");
        }
        toast("Key copied");
      } }, "Copy"),
      el("button", { class: "ghost small", onclick: () => (box.hidden = true) }, "Done")));
  box.hidden = false;
}

async function saveClient(ev) {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const spec = clientSpecFromForm(form);
  const name = editingClient ? editingClient.name : form.querySelector("[name=name]").value.trim();
  try {
    if (editingClient) {
      const { data } = await api("PUT", `/admin/v1/clients/${name}`, spec, { "If-Match": `"${editingClient.revision}"` });
      editingClient = data;
      toast(`${name} saved`);
    } else {
      const { data } = await api("POST", "/admin/v1/clients", { name, spec });
      editingClient = data;
      showSecret(name, data.key.id, data.key.secret);
      toast(`${name} created`);
    }
    await loadClients();
  } catch (e) {
    // One input holds every route: `routes[1]` is shown next to it.
    if (e.problem && e.problem.field) e.problem.field = e.problem.field.replace(/\.routes\[\d+\]$/, ".routes");
    showProblem(form, e, "clients", name);
  }
}

async function addKey(item) {
  try {
    const { data } = await api("POST", `/admin/v1/clients/${item.name}/keys`);
    showSecret(item.name, data.id, data.secret);
    await loadClients();
  } catch (e) {
    toast(e.message, true);
  }
}

async function revokeKey(item, id) {
  if (!confirm(`Revoke key ${id} of ${item.name}? Requests with it are refused at once.`)) return;
  try {
    await api("DELETE", `/admin/v1/clients/${item.name}/keys/${id}`);
    toast(`Key ${id} revoked`);
    await loadClients();
  } catch (e) {
    toast(e.message, true);
  }
}

// The try-it sends as a chosen client (its routes, conditions and Busgate-Client).
async function fillTryClients() {
  const select = $("#try-client");
  if (!select) return;
  const current = select.value;
  const { data } = await api("GET", "/admin/v1/clients");
  select.replaceChildren(
    el("option", { value: "" }, "(anonymous)"),
    ...data.items.map((c) => el("option", { value: c.name, selected: c.name === current }, c.name)));
}

views.clients = loadClients;
const loadTryRoutes = views.try;
views.try = async () => {
  await loadTryRoutes();
  await fillTryClients();
};
if (location.hash.startsWith("#clients") || location.hash.startsWith("#try")) route();
