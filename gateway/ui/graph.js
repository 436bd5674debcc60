// Busgate admin UI: composition (targets that need other targets' answers). The route editor's
// fields for `as`, `needs`, `with` and `when.field`, the stages it shows as you edit, and the
// try-it's waterfall (each source's start and end). Loaded after app.js, whose helpers it uses
// ($, $$, el) and which calls graphFields, graphFromRow, renderStages and waterfall.
"use strict";

/** The editor fields of one target for composition. */
function graphFields(t, i) {
  const f = (t.when && t.when.field) || {};
  const op = f.equals !== undefined ? "equals" : f.in !== undefined ? "in" : f.exists !== undefined ? "exists" : "equals";
  const value = f.equals !== undefined ? JSON.stringify(f.equals) : f.in !== undefined ? JSON.stringify(f.in) : f.exists !== undefined ? String(f.exists) : "";
  const input = (label, name, val, attrs = {}) =>
    el("label", {}, label, el("input", { name, value: val, "data-field": `targets[${i}].${attrs.field || name}`, ...attrs.extra }), el("small", { class: "field-error" }));
  return [
    input("Name (as)", "as", t.as || "", { extra: { placeholder: "the service's name" } }),
    input("Needs (comma separated)", "needs", (t.needs || []).join(", "), { extra: { placeholder: "service1" } }),
    input("With (name=/target/pointer, …)", "with", Object.entries(t.with || {}).map(([a, b]) => `${a}=${b}`).join(", "), { extra: { placeholder: "carrier=/service2/carrier" } }),
    input("When answer at (pointer)", "field_path", f.path || "", { field: "when.field.path", extra: { placeholder: "/service1/status" } }),
    el("label", {}, "is",
      el("select", { name: "field_op", "data-field": `targets[${i}].when.field` },
        ["equals", "in", "exists"].map((o) => el("option", { value: o, selected: o === op }, o))),
      el("small", { class: "field-error" })),
    input("value (JSON; in: a list; exists: true/false)", "field_value", value, { field: "when.field.value", extra: { placeholder: "\"shipped\"" } }),
  ];
}

/** Reads the composition fields of a target's row into the target `t` and its `when`. */
function graphFromRow(row, t, when) {
  const v = (n) => ($(`[name=${n}]`, row) || { value: "" }).value.trim();
  const names = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  if (v("as")) t.as = v("as");
  if (v("needs")) t.needs = names(v("needs"));
  if (v("with")) t.with = Object.fromEntries(names(v("with")).map((p) => { const i = p.indexOf("="); return [p.slice(0, i).trim(), p.slice(i + 1).trim()]; }));
  if (v("field_path")) {
    const op = v("field_op");
    let value = v("field_value");
    try { value = JSON.parse(value); } catch (_) { /* a bare word: a string */ }
    if (op === "exists") value = value === true || value === "true";
    when.field = { path: v("field_path"), [op]: value };
  }
}

/** Stages of targets `{name, needs}`: a list of lists of names, or the names on a cycle. */
function stagesOf(targets) {
  const byName = new Map(targets.map((t) => [t.name, t]));
  const stage = new Map();
  for (let round = 0; round <= targets.length; round++) {
    for (const t of targets) {
      if (stage.has(t.name)) continue;
      const needs = t.needs.filter((n) => byName.has(n));
      if (needs.every((n) => stage.has(n))) stage.set(t.name, needs.length ? Math.max(...needs.map((n) => stage.get(n))) + 1 : 0);
    }
  }
  const stuck = targets.filter((t) => !stage.has(t.name)).map((t) => t.name);
  if (stuck.length) return { cycle: stuck };
  const out = [];
  for (const [name, s] of stage) (out[s] = out[s] || []).push(name);
  return { stages: out };
}

/** The route editor's stages, from the targets as the form has them now. */
function renderStages() {
  const box = $("#route-stages");
  if (!box) return;
  const targets = $$("#targets .target").map((row) => {
    const v = (n) => ($(`[name=${n}]`, row) || { value: "" }).value.trim();
    const needs = v("needs").split(",").map((s) => s.trim()).filter(Boolean);
    const path = v("field_path").split("/")[1];
    if (path && !needs.includes(path)) needs.push(path.replace(/~1/g, "/").replace(/~0/g, "~"));
    return { name: v("as") || v("service"), needs };
  }).filter((t) => t.name);
  const { stages, cycle } = stagesOf(targets);
  if (cycle) {
    box.replaceChildren(el("span", { class: "error" }, `cycle among: ${cycle.join(", ")}`));
  } else if (stages.length <= 1) {
    box.replaceChildren(el("span", { class: "muted" }, "One stage: every target is asked at once."));
  } else {
    box.replaceChildren(...stages.flatMap((names, i) => [
      i ? el("span", { class: "arrow" }, " → ") : "",
      el("span", { class: "stage" }, el("strong", {}, `stage ${i}: `), names.join(", ")),
    ]));
  }
}

/** The try-it's waterfall: one bar per source from its start to its end, on one time axis. */
function waterfall(body) {
  const sources = Object.entries((body && body.sources) || {});
  if (!sources.length || !sources.some(([, s]) => s.started_ms !== undefined)) return "";
  const total = Math.max(body.elapsed_ms || 0, ...sources.map(([, s]) => (s.started_ms || 0) + (s.elapsed_ms || 0)), 0.01);
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs = {}, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const row = 22, left = 140, width = 600;
  const chart = svg("svg", { class: "waterfall", viewBox: `0 0 ${left + width + 10} ${row * sources.length + 24}`, role: "img", "aria-label": "sources over time" });
  sources.forEach(([name, s], i) => {
    const y = i * row + 4;
    chart.append(svg("text", { x: 0, y: y + 13, class: "wf-name" }, name));
    if (s.started_ms === undefined) {
      chart.append(svg("text", { x: left, y: y + 13, class: "wf-note" }, `${s.status}${s.reason ? ` (${s.reason})` : ""}: not asked`));
      return;
    }
    const x = left + (s.started_ms / total) * width;
    const w = Math.max(((s.elapsed_ms || 0) / total) * width, 1);
    const bar = svg("rect", { x, y, width: w, height: row - 8, class: `wf-bar ${statusClass(s.status)}` });
    bar.append(svg("title", {}, `${name}: ${s.status}, asked at ${s.started_ms} ms, ${s.elapsed_ms ?? 0} ms`));
    // The duration beside the bar: after its end, or before its start when there is no room.
    const room = x + w + 60 <= left + width;
    const label = svg("text", { x: room ? x + w + 4 : x - 4, y: y + 13, class: "wf-note", "text-anchor": room ? "start" : "end" }, `${s.elapsed_ms ?? 0} ms`);
    chart.append(bar, label);
  });
  const axis = row * sources.length + 18;
  chart.append(svg("text", { x: left, y: axis, class: "wf-note" }, "0 ms"), svg("text", { x: left + width - 60, y: axis, class: "wf-note" }, `${Math.round(total * 100) / 100} ms`));
  return el("div", { class: "waterfall-box" }, el("h4", {}, "Timeline"), chart);
}

document.addEventListener("input", (ev) => { if (ev.target.closest && ev.target.closest("#targets")) renderStages(); });
document.addEventListener("change", (ev) => { if (ev.target.closest && ev.target.closest("#targets")) renderStages(); });
