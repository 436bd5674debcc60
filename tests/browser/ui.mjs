// Drives the Busgate admin UI in headless Chromium, as a person would.
// Started by tests/tests/browser.rs with a running stack; exits non-zero on the first failure.
//   ADMIN_URL, ADMIN_TOKEN, SCREENSHOTS (folder), CHROMIUM (binary, default /usr/bin/chromium)
// The stack has demo services service1/service2 with adapters, and a native worker "billing".
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const admin = process.env.ADMIN_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
page.on("dialog", (d) => d.accept());
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const step = (what) => console.log(`ui: ${what}`);

try {
  // Sign in with the link `busgate up` prints.
  await page.goto(`${admin}/#token=${token}`);
  await page.locator("#services-table tbody tr[data-name=service1]").waitFor();
  assert.match(await page.locator("#status").innerText(), /revision/);
  step("services listed");

  // Create a service.
  await page.click("#new-service");
  await page.fill("#service-form [name=name]", "billing");
  await page.fill("#service-form [name=timeout]", "500ms");
  await page.fill("#service-form [name=description]", "Invoices, answered natively on NATS");
  await page.click("#service-form button.primary");
  await page.locator("#services-table tbody tr[data-name=billing]").waitFor();
  await page.locator("#services-table tr[data-name=billing] .chip.ok").waitFor();
  step("service billing created, its native worker is live");
  await page.click("#services-table tr[data-name=billing] button:text('Edit')");
  await page.locator("#service-instances table tbody tr td.mono").first().waitFor();
  await shot("services");

  // Create a route; first with a mistake, to see the API's message next to the field.
  await page.click("a[data-view=routes]");
  await page.click("#new-route");
  await page.fill("#route-form [name=name]", "combo");
  await page.fill("#route-form [name=deadline]", "1s");
  await page.fill("#bindings .binding [name=path]", "/api/combo/{order_id}");
  await page.selectOption("#targets .target:nth-child(1) [name=service]", "service1");
  await page.click("#add-target");
  await page.selectOption("#targets .target:nth-child(2) [name=service]", "billing");
  await page.fill("#targets .target:nth-child(2) [name=timeout]", "5s");
  await page.click("#route-form button.primary");
  const fieldError = page.locator("#targets .target:nth-child(2) [name=timeout] + .field-error");
  await fieldError.waitFor();
  assert.match(await fieldError.innerText(), /deadline/);
  assert.ok(await page.locator("#targets .target:nth-child(2) [name=timeout].invalid").count());
  step("validation message shown next to the field");
  await shot("route-editor-error");
  await page.fill("#targets .target:nth-child(2) [name=timeout]", "");
  await page.click("#route-form button.primary");
  await page.locator("#routes-table tbody tr[data-name=combo]").waitFor();
  step("route combo created");
  await shot("routes");

  // Try it: both sources answer.
  const tryRoute = async () => {
    await page.click("a[data-view=try]");
    await page.locator("#try-route option[value=combo]").waitFor({ state: "attached" });
    await page.selectOption("#try-route", "combo");
    await page.fill("#try-form [name=order_id]", "UI-7");
    await page.click("#try-form button.primary");
    await page.locator("#try-result .source").first().waitFor();
    return page.locator("#try-result .source").evaluateAll((nodes) =>
      nodes.map((n) => [n.dataset.source, n.querySelector(".chip").textContent]));
  };
  assert.deepEqual(await tryRoute(), [["service1", "ok"], ["billing", "ok"]]);
  assert.match(await page.locator("#try-result pre").innerText(), /"order_id": "UI-7"/);
  step("try it: service1 and billing both ok");
  await shot("try-it");

  // Change the route to service1 only, then roll it back from the history.
  await page.click("a[data-view=routes]");
  await page.click("#routes-table tr[data-name=combo] button:text('Edit')");
  await page.click("#targets .target:nth-child(2) button.danger");
  await page.click("#route-form button.primary");
  await page.locator("#routes-table tr[data-name=combo] td:nth-child(3):not(:has-text('billing'))").waitFor();
  assert.deepEqual(await tryRoute(), [["service1", "ok"]]);
  step("route changed to one source");

  await page.click("a[data-view=history]");
  await page.locator("#history-object option[value='routes/combo']").waitFor({ state: "attached" });
  await page.selectOption("#history-object", "routes/combo");
  await page.locator("#history-table tbody tr").nth(1).waitFor();
  await shot("history");
  const oldest = page.locator("#history-table tbody tr").last();
  await oldest.locator("button:text('Roll back to this')").click();
  await page.locator("#toast:has-text('Rolled back')").waitFor();
  step("rolled back");
  assert.deepEqual(await tryRoute(), [["service1", "ok"], ["billing", "ok"]]);
  step("after the rollback both sources answer again");

  assert.deepEqual(consoleErrors, []);
  console.log("ui: all steps passed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
