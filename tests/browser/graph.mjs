// Drives the admin UI's composition parts in headless Chromium: the route editor's needs/with
// fields and the stages it shows, a false condition on an answer, and the try-it's waterfall.
// Started by tests/tests/browser.rs with a running stack (demo service1/service2 with adapters);
// exits non-zero on the first failure.
//   ADMIN_URL, ADMIN_TOKEN, SCREENSHOTS (folder), CHROMIUM (binary, default /usr/bin/chromium)
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
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.on("dialog", (d) => d.accept());
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const step = (what) => console.log(`graph: ${what}`);
const shot = async (name, selector) => {
  await page.evaluate(() => (document.querySelector("#toast").hidden = true));
  await page.locator(selector).screenshot({ path: `${shots}/${name}.png` });
};

try {
  await page.goto(`${admin}/#token=${token}`);
  await page.locator("#services-table tbody tr[data-name=service1]").waitFor();

  // A two-stage route made in the editor: service2 needs service1 and is given its order_id.
  await page.click("a[data-view=routes]");
  await page.click("#new-route");
  await page.fill("#route-form [name=name]", "chain");
  await page.fill("#bindings .binding [name=path]", "/api/chain/{order_id}");
  await page.selectOption("#targets .target:nth-child(1) [name=service]", "service1");
  assert.match(await page.locator("#route-stages").innerText(), /One stage/);
  await page.click("#add-target");
  const second = "#targets .target:nth-child(2)";
  await page.selectOption(`${second} [name=service]`, "service2");
  await page.click(`${second} details summary`);
  await page.fill(`${second} [name=needs]`, "service1");
  await page.fill(`${second} [name=with]`, "id=/service1/order_id");
  assert.match(await page.locator("#route-stages").innerText(), /stage 0: service1.*stage 1: service2/s);
  step("the editor shows two stages as needs are typed");
  // A cycle is shown before saving, and refused by the API when saved.
  await page.click("#targets .target:nth-child(1) details summary");
  await page.fill("#targets .target:nth-child(1) [name=needs]", "service2");
  assert.match(await page.locator("#route-stages").innerText(), /cycle/);
  await page.click("#route-form button.primary");
  await page.locator("#route-form .field-error:has-text('cycle'), #route-form .form-error:has-text('cycle')").first().waitFor();
  step("a cycle is shown in the editor and the API's 422 next to the form");
  await page.fill("#targets .target:nth-child(1) [name=needs]", "");
  // A third target: service1 again under an alias, only for paid orders (a condition on an answer).
  await page.click("#add-target");
  const third = "#targets .target:nth-child(3)";
  await page.selectOption(`${third} [name=service]`, "service1");
  await page.click(`${third} details summary`);
  await page.fill(`${third} [name=as]`, "again");
  await page.fill(`${third} [name=field_path]`, "/service2/carrier");
  await page.selectOption(`${third} [name=field_op]`, "equals");
  await page.fill(`${third} [name=field_value]`, "no such carrier");
  await shot("route-editor-stages", "#route-editor");
  await page.click("#route-form button.primary");
  await page.locator("#routes-table tbody tr[data-name=chain]").waitFor();
  assert.match(await page.locator("#routes-table tr[data-name=chain]").innerText(), /service2 ← service1/);
  step("route chain saved; the list shows what each target needs");

  // Try it: the waterfall has a bar per source asked, the skipped one says why.
  await page.click("a[data-view=try]");
  await page.locator("#try-route option[value=chain]").waitFor({ state: "attached" });
  await page.selectOption("#try-route", "chain");
  await page.fill("#try-form [name=order_id]", "G-1");
  await page.click("#try-form button.primary");
  await page.locator("#try-result svg.waterfall").waitFor();
  const answer = JSON.parse(await page.locator("#try-result pre").innerText());
  assert.equal(answer.sources.service1.status, "ok", JSON.stringify(answer));
  assert.equal(answer.sources.service2.status, "ok", JSON.stringify(answer));
  assert.ok(answer.sources.service2.started_ms >= answer.sources.service1.started_ms + answer.sources.service1.elapsed_ms - 0.05, JSON.stringify(answer));
  assert.equal(answer.sources.again.status, "skipped");
  assert.equal(answer.sources.again.reason, "condition");
  assert.equal(await page.locator("#try-result svg.waterfall rect.wf-bar").count(), 2);
  const bars = await page.locator("#try-result svg.waterfall rect.wf-bar").evaluateAll((rects) => rects.map((r) => [Number(r.getAttribute("x")), Number(r.getAttribute("width"))]));
  assert.ok(bars[1][0] >= bars[0][0] + bars[0][1] - 1, `the second bar starts after the first ends: ${JSON.stringify(bars)}`);
  assert.match(await page.locator("#try-result svg.waterfall").textContent(), /condition/);
  await shot("try-it-waterfall", "#try-result .card");
  step("try it: a waterfall with service2 after service1, the skipped alias with its reason");

  assert.deepEqual(consoleErrors, []);
  console.log("graph: all steps passed");
} catch (e) {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
