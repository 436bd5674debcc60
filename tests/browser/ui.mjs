// Drives the Busgate admin UI in headless Chromium, as a person would.
// Started by tests/tests/browser.rs with a running stack; exits non-zero on the first failure.
//   ADMIN_URL, ADMIN_TOKEN, SCREENSHOTS (folder), CHROMIUM (binary, default /usr/bin/chromium),
//   UPSTREAM_URL (a test HTTP server answering GET /invoices/{order_id} with recognisable JSON)
// The stack has demo services service1/service2 with adapters, and a process that serves the
// service "invoices" from UPSTREAM_URL once the UI has created it.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const admin = process.env.ADMIN_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SCREENSHOTS;
const upstream = process.env.UPSTREAM_URL;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
page.on("dialog", (d) => d.accept());
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
// The viewport, or one part of the page: small pictures for the docs.
const shot = async (name, selector) => {
  // Without the passing notice, which may lie over the picture.
  await page.evaluate(() => (document.querySelector("#toast").hidden = true));
  const path = `${shots}/${name}.png`;
  await (selector ? page.locator(selector).screenshot({ path }) : page.screenshot({ path }));
};
const step = (what) => console.log(`ui: ${what}`);
const box = async (locator) => {
  const b = await locator.boundingBox();
  assert.ok(b, "the element is laid out");
  return b;
};

/** Every Edit/Delete cell sits on its row, level with the row's name cell, inside its dividers. */
async function assertActionsOnTheirRows(table) {
  const rows = page.locator(`${table} tbody tr[data-name]`);
  const n = await rows.count();
  assert.ok(n > 0, `${table} has rows`);
  for (let i = 0; i < n; i++) {
    const row = rows.nth(i);
    const [r, name, actions] = await Promise.all([box(row), box(row.locator("td").first()), box(row.locator("td.actions"))]);
    assert.ok(Math.abs(actions.y - name.y) < 1, `${table} row ${i}: actions at y=${actions.y}, name at y=${name.y}`);
    assert.ok(Math.abs(actions.height - name.height) < 1, `${table} row ${i}: actions ${actions.height} high, name ${name.height}`);
    assert.ok(actions.y >= r.y - 0.5 && actions.y + actions.height <= r.y + r.height + 0.5, `${table} row ${i}: actions outside the row`);
    assert.ok(actions.x > name.x, `${table} row ${i}: actions are the last column`);
  }
}

try {
  // Before anything is typed, the sign-in form says nothing about a refused token.
  await page.goto(`${admin}/`);
  await page.locator("#login").waitFor();
  await page.waitForLoadState("networkidle");
  assert.equal(await page.locator("#login-error").innerText(), "");
  assert.equal(await page.locator("#login-error").isVisible(), false);
  await shot("sign-in");
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button.primary");
  await page.locator("#login-error:has-text('The token was refused.')").waitFor();
  step("the token message shows only after a refused attempt");

  // The icon: linked from the page, and at /favicon.ico, as an image that may be cached.
  const icons = await page.evaluate(async () => {
    const out = [];
    for (const href of [document.querySelector("link[rel=icon]").href, "/favicon.ico"]) {
      const r = await fetch(href);
      const text = await r.text();
      out.push({ status: r.status, type: r.headers.get("content-type"), cache: r.headers.get("cache-control"), svg: text.startsWith("<svg") });
    }
    return out;
  });
  for (const icon of icons) {
    assert.deepEqual(icon, { status: 200, type: "image/svg+xml", cache: "public, max-age=86400", svg: true });
  }
  step("the favicon is served");

  // Sign in with the link `busgate up` prints.
  await page.goto(`${admin}/#token=${token}`);
  await page.locator("#services-table tbody tr[data-name=service1]").waitFor();
  assert.match(await page.locator("#status").innerText(), /revision/);
  assert.equal(await page.locator("#login").isVisible(), false);
  await assertActionsOnTheirRows("#services-table");
  step("services listed, Edit/Delete on their rows");

  // Create a service with an upstream; first with a mistake, to see the API's message next to
  // the field.
  await page.click("#new-service");
  await page.fill("#service-form [name=name]", "invoices");
  await page.fill("#service-form [name=timeout]", "0ms");
  await page.fill("#service-form [name=description]", "Invoices, from the billing system's HTTP API");
  await page.fill("#service-form [name=upstream_url]", `${upstream}/invoices/{order_id}`);
  await page.fill("#service-form [name=upstream_timeout]", "400ms");
  await page.fill("#service-form [name=upstream_concurrency]", "64");
  await page.click("#add-header");
  await page.fill("#upstream-headers .header [name=header_name]", "X-Api-Key");
  await page.selectOption("#upstream-headers .header [name=header_source]", "env");
  await page.fill("#upstream-headers .header [name=header_value]", "INVOICES_KEY");
  assert.equal(await page.locator("#upstream-headers .header [name=header_source] option").allInnerTexts().then((t) => t.join("|")), "environment variable|file");
  await page.click("#service-form button.primary");
  const timeoutError = page.locator("#service-form [name=timeout] + .field-error");
  await page.locator("#service-form [name=timeout].invalid").waitFor();
  assert.match(await timeoutError.innerText(), /between/);
  step("validation message shown next to the service's field");
  await shot("service-upstream", "#service-editor");
  await page.fill("#service-form [name=timeout]", "500ms");
  assert.equal(await page.locator("#service-form .invalid").count(), 0, "a changed field loses its message");
  // The gateway's refusals of upstream fields (422 naming the field, as the admin API writes
  // them) land next to that field. Answered here by the browser, so that the UI's placing is
  // tested whatever the gateway's rules; nothing is stored.
  const refusals = [
    ["services.invoices.upstream.url", "must be http or https", "[name=upstream_url]"],
    ["services.invoices.upstream.headers.X-Api-Key.env", "is not an environment variable name", "#upstream-headers .header [name=header_value]"],
    ["services.invoices.upstream.headers.X-Api-Key", "is not a header name", "#upstream-headers .header [name=header_name]"],
    ["services.invoices.upstream.concurrency", "must be between 1 and 65536", "[name=upstream_concurrency]"],
    ["services.invoices.cache.ttl", "must be between 1ms and 24h", "[name=cache_ttl]"],
    ["services.invoices.cache.stale_if_error", "at most 24h", "[name=cache_sie]"],
  ];
  assert.equal(await page.locator("#service-form [name=coalesce]").isChecked(), true, "coalescing is on by default");
  for (const [field, reason, input] of refusals) {
    await page.route("**/admin/v1/services", (route) => route.fulfill({
      status: 422,
      contentType: "application/problem+json",
      body: JSON.stringify({ type: "urn:busgate:problem:invalid-config", title: "Invalid configuration", status: 422, detail: `${field}: ${reason}`, field }),
    }));
    await page.click("#service-form button.primary");
    await page.locator(`#service-form ${input}.invalid`).waitFor();
    assert.equal(await page.locator(`#service-form ${input} ~ .field-error`).innerText(), reason, field);
    assert.equal(await page.locator("#service-form .invalid").count(), 1, field);
    await page.unroute("**/admin/v1/services");
  }
  step("refusals of upstream and cache fields shown next to each field");
  await page.click("#service-form button.primary");
  await page.locator("#services-table tbody tr[data-name=invoices]").waitFor();
  const stored = await page.evaluate(async (t) => {
    const r = await fetch("/admin/v1/services/invoices", { headers: { Authorization: `Bearer ${t}` } });
    return (await r.json()).spec;
  }, token);
  assert.deepEqual(stored.upstream, {
    url: `${upstream}/invoices/{order_id}`,
    timeout: "400ms",
    concurrency: 64,
    headers: { "X-Api-Key": { env: "INVOICES_KEY" } },
  });
  step("service invoices created with its upstream");

  // Its live instance says how it serves and from where, inside its card.
  await page.locator("#services-table tr[data-name=invoices] .chip.ok").waitFor();
  await page.click("#services-table tr[data-name=invoices] button:text('Edit')");
  const instance = page.locator("#service-instances table tbody tr[data-instance]").first();
  await instance.waitFor();
  assert.match(await instance.locator("td.mode").innerText(), /^adapters?$/);
  assert.equal(await instance.locator("td.upstream").innerText(), `${upstream}/invoices/{order_id}`);
  const [table, card] = await Promise.all([box(page.locator("#service-instances table")), box(page.locator("#service-editor"))]);
  assert.ok(table.x >= card.x && table.x + table.width <= card.x + card.width, `instances table ${table.x}+${table.width} overflows its card ${card.x}+${card.width}`);
  assert.equal(await page.locator("#upstream-headers .header [name=header_value]").inputValue(), "INVOICES_KEY");
  await shot("service-instances", "#service-instances");
  step("live instance: mode and upstream shown, the table fits its card");

  // Resilience: a circuit breaker with a bad ratio is refused next to its field; fixed, it is
  // stored with retries, and the list shows the breaker's state on this instance.
  await page.check("#service-form [name=breaker_on]");
  await page.fill("#service-form [name=breaker_failure_ratio]", "2");
  await page.click("#service-form button.primary");
  await page.locator("#service-form [name=breaker_failure_ratio].invalid").waitFor();
  assert.match(await page.locator("#service-form [name=breaker_failure_ratio] ~ .field-error").innerText(), /between 0 and 1/);
  await page.fill("#service-form [name=breaker_failure_ratio]", "0.5");
  await page.fill("#service-form [name=breaker_min_requests]", "10");
  await page.check("#service-form [name=retry_on]");
  await page.click("#service-form button.primary");
  await page.locator("#services-table tr[data-name=invoices] td.breaker .chip").waitFor();
  assert.equal(await page.locator("#services-table tr[data-name=invoices] td.breaker .chip").innerText(), "closed");
  const guarded = await page.evaluate(async (t) => {
    const r = await fetch("/admin/v1/services/invoices", { headers: { Authorization: `Bearer ${t}` } });
    return (await r.json()).spec;
  }, token);
  assert.equal(guarded.breaker.failure_ratio, 0.5);
  assert.equal(guarded.breaker.min_requests, 10);
  assert.equal(typeof guarded.retry, "object", "retry with its defaults");
  assert.equal(guarded.upstream.url, `${upstream}/invoices/{order_id}`, "the upstream is kept");
  await page.click("#services-table tr[data-name=invoices] button:text('Edit')");
  assert.equal(await page.locator("#service-form [name=breaker_on]").isChecked(), true);
  assert.equal(await page.locator("#service-form [name=breaker_min_requests]").inputValue(), "10");
  assert.equal(await page.locator("#service-form [name=hedge_on]").isChecked(), false);
  step("resilience: a bad breaker setting refused at its field; breaker and retry stored, state shown");
  await page.click("#service-form [data-close]");

  // A route that asks the new service and the demo service1; first with a mistake.
  await page.click("a[data-view=routes]");
  await page.click("#new-route");
  await page.fill("#route-form [name=name]", "invoice");
  await page.fill("#route-form [name=deadline]", "1s");
  await page.fill("#bindings .binding [name=path]", "/api/invoices/{order_id}");
  await page.selectOption("#targets .target:nth-child(1) [name=service]", "invoices");
  await page.click("#add-target");
  await page.selectOption("#targets .target:nth-child(2) [name=service]", "service1");
  await page.fill("#targets .target:nth-child(2) [name=timeout]", "5s");
  await page.click("#route-form button.primary");
  const fieldError = page.locator("#targets .target:nth-child(2) [name=timeout] + .field-error");
  await fieldError.waitFor();
  assert.match(await fieldError.innerText(), /deadline/);
  assert.ok(await page.locator("#targets .target:nth-child(2) [name=timeout].invalid").count());
  step("validation message shown next to the route's field");
  await shot("route-editor-error", "#route-editor");
  await page.fill("#targets .target:nth-child(2) [name=timeout]", "");
  await page.click("#route-form button.primary");
  await page.locator("#routes-table tbody tr[data-name=invoice]").waitFor();
  const routeSaved = Date.now();
  await assertActionsOnTheirRows("#routes-table");
  step("route invoice created");
  await shot("routes", "#routes-table");

  // Try it: the answer holds the upstream's data; asked again for at most a second if the new
  // service is not served yet (with the single-service adapter it is at the first attempt).
  const tryRoute = async () => {
    await page.click("a[data-view=try]");
    await page.locator("#try-route option[value=invoice]").waitFor({ state: "attached" });
    await page.selectOption("#try-route", "invoice");
    await page.fill("#try-form [name=order_id]", "UI-7");
    await page.click("#try-form button.primary");
    await page.locator("#try-result .source, #try-result .error").first().waitFor();
    return page.locator("#try-result .source").evaluateAll((nodes) =>
      nodes.map((n) => [n.dataset.source, n.querySelector(".chip").textContent]));
  };
  const firstTry = Date.now();
  let attempts = 1;
  let sources = await tryRoute();
  while (JSON.stringify(sources) !== JSON.stringify([["invoices", "ok"], ["service1", "ok"]]) && Date.now() - firstTry < 1000) {
    attempts += 1;
    sources = await tryRoute();
  }
  const answeredIn = Date.now() - firstTry;
  assert.deepEqual(sources, [["invoices", "ok"], ["service1", "ok"]], `try it: ${attempts} attempts in ${answeredIn} ms`);
  const answer = JSON.parse(await page.locator("#try-result pre").innerText());
  assert.deepEqual(answer.data.invoices, { invoice: "INV-UI-7", amount_due: 129.5, currency: "EUR", issued_by: "test-upstream" });
  assert.equal(answer.order_id, "UI-7");
  step(`try it: the upstream's invoice and service1 both ok at attempt ${attempts}, ${answeredIn} ms after the first (route saved ${firstTry - routeSaved} ms before it)`);
  await shot("try-it", "#view-try");

  // Change the service's upstream timeout: the history shows that field, not whole documents.
  await page.click("a[data-view=services]");
  await page.click("#services-table tr[data-name=invoices] button:text('Edit')");
  await page.fill("#service-form [name=upstream_timeout]", "300ms");
  await page.click("#service-form button.primary");
  await page.locator("#toast:has-text('Service invoices saved')").waitFor();
  await page.click("a[data-view=history]");
  await page.locator("#history-object option[value='services/invoices']").waitFor({ state: "attached" });
  await page.selectOption("#history-object", "services/invoices");
  const changed = page.locator("#diff-body tr[data-path='upstream.timeout']");
  await changed.waitFor();
  assert.equal(await page.locator("#diff-body tbody tr").count(), 1);
  assert.equal(await changed.locator("td.before").innerText(), '"400ms"');
  assert.equal(await changed.locator("td.after").innerText(), '"300ms"');
  assert.equal(await page.locator("#view-history pre").count(), 0, "no whole documents");
  await shot("history-service", "#view-history");
  step("history: the diff of two service revisions names upstream.timeout");

  // Change the route to the new service only, compare, then roll back from the history.
  await page.click("a[data-view=routes]");
  await page.click("#routes-table tr[data-name=invoice] button:text('Edit')");
  await page.click("#targets .target:nth-child(2) button.danger");
  await page.click("#route-form button.primary");
  await page.locator("#routes-table tr[data-name=invoice] td:nth-child(3):not(:has-text('service1'))").waitFor();
  assert.deepEqual(await tryRoute(), [["invoices", "ok"]]);
  step("route changed to one source");

  await page.click("a[data-view=history]");
  await page.locator("#history-object option[value='routes/invoice']").waitFor({ state: "attached" });
  await page.selectOption("#history-object", "routes/invoice");
  await page.locator("#history-table tbody tr").nth(1).waitFor();
  await page.locator("#diff-body tr[data-path='targets[1].service']").waitFor();
  const removed = await page.locator("#diff-body tbody tr").evaluateAll((rows) => rows.map((r) => `${r.className} ${r.dataset.path}`));
  assert.deepEqual(removed.sort(), ["diff-removed targets[1].required", "diff-removed targets[1].service"]);
  assert.equal(await page.locator("#diff-body tr[data-path='targets[1].service'] td.before").innerText(), '"service1"');
  await shot("history", "#view-history");
  // Two revisions of one's own choosing: the same one twice says so.
  const first = await page.locator("#diff-from option").first().getAttribute("value");
  await page.selectOption("#diff-from", first);
  await page.selectOption("#diff-to", first);
  await page.locator("#diff-body:has-text('Choose two different revisions')").waitFor();
  // "Changes" on the latest revision compares it with the one before it again.
  await page.locator("#history-table tbody tr").first().locator("button:text('Changes')").click();
  await page.locator("#diff-body tr[data-path='targets[1].service']").waitFor();
  assert.equal(await page.locator("#history-table tbody tr").last().locator("button:text('Changes')").count(), 0, "the first revision has nothing before it");
  step("history: the route's diff shows the removed target");
  const oldest = page.locator("#history-table tbody tr").last();
  await oldest.locator("button:text('Roll back to this')").click();
  await page.locator("#toast:has-text('Rolled back')").waitFor();
  step("rolled back");
  assert.deepEqual(await tryRoute(), [["invoices", "ok"], ["service1", "ok"]]);
  step("after the rollback both sources answer again");

  assert.deepEqual(consoleErrors, []);
  console.log("ui: all steps passed");
} catch (e) {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
