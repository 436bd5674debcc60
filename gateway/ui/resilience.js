// Busgate admin UI: a service's resilience (circuit breaker, retries within a budget, hedged
// requests) in the service editor, and the breaker's state on this instance in the services
// list. Loaded after app.js, whose helpers it uses ($, el, api).
"use strict";

/** The editor's three groups: each is off until its box is ticked; an empty field is the default. */
const RESILIENCE = [
  { key: "breaker", legend: "Circuit breaker", hint: "Answers circuit_open at once, without asking, while the service keeps failing.",
    fields: [["failure_ratio", "Failure ratio", "0.5"], ["min_requests", "Min requests", "20"], ["window", "Window", "10s"], ["open_for", "Open for", "5s"], ["probes", "Probes", "3"]] },
  { key: "retry", legend: "Retries", hint: "Asks again after an error or no responders, while the deadline allows, within a budget of the service's traffic.",
    fields: [["attempts", "Attempts", "2"], ["budget", "Budget", "0.2"]] },
  { key: "hedge", legend: "Hedged requests", hint: "Asks another instance when the first is slow; the first reply wins.",
    fields: [["after", "After", "p95"], ["max_extra", "Max extra", "0.1"]] },
];

/** The fieldsets, made once into the editor's empty `#service-resilience`. */
function resilienceFields() {
  const box = $("#service-resilience");
  if (box.childElementCount) return box;
  box.append(el("legend", {}, "Resilience"));
  for (const group of RESILIENCE) {
    const inputs = group.fields.map(([name, label, placeholder]) =>
      el("label", {}, label,
        el("input", { name: `${group.key}_${name}`, "data-field": `${group.key}.${name}`, placeholder, spellcheck: "false", autocomplete: "off" }),
        el("small", { class: "field-error" })));
    box.append(el("div", { class: "resilience-group", "data-group": group.key },
      el("label", { class: "check" },
        el("input", { type: "checkbox", name: `${group.key}_on`, "data-field": group.key }), ` ${group.legend}`,
        el("small", { class: "field-error" })),
      el("p", { class: "muted" }, group.hint),
      el("div", { class: "grid" }, ...inputs)));
  }
  return box;
}

/** Fills the fields from a service's spec (or empties them for a new service). */
function fillResilience(form, spec) {
  resilienceFields();
  for (const group of RESILIENCE) {
    const value = spec && spec[group.key];
    form[`${group.key}_on`].checked = !!value;
    for (const [name] of group.fields) {
      const v = value ? value[name] : undefined;
      form[`${group.key}_${name}`].value = v === undefined || v === null ? "" : String(v);
    }
  }
}

/** The `breaker`, `retry` and `hedge` objects the form describes (numbers as numbers). */
function resilienceFromForm(form) {
  const out = {};
  for (const group of RESILIENCE) {
    if (!form[`${group.key}_on`].checked) continue;
    const value = {};
    for (const [name] of group.fields) {
      const text = form[`${group.key}_${name}`].value.trim();
      if (!text) continue;
      value[name] = /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : text;
    }
    out[group.key] = value;
  }
  return out;
}

/** This instance's breakers by service: `{name: {breaker, p50_ms, p95_ms}}` (empty when unknown). */
async function breakerStates() {
  try {
    return (await api("GET", "/admin/v1/resilience")).data.services || {};
  } catch (_) {
    return {};
  }
}

/** The services list's breaker cell. */
function breakerCell(state) {
  if (!state || !state.breaker) return el("td", { class: "breaker" }, el("span", { class: "muted" }, "—"));
  const cls = state.breaker === "closed" ? "ok" : state.breaker === "open" ? "bad" : "warn";
  const title = state.p95_ms !== undefined ? `p50 ${state.p50_ms} ms · p95 ${state.p95_ms} ms` : "";
  return el("td", { class: "breaker" }, el("span", { class: `chip ${cls}`, title }, state.breaker.replace("_", "-")));
}
