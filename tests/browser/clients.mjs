// Drives the Clients page of the Busgate admin UI in headless Chromium, and checks each step
// against the public API: the key the page shows once works, a second key works, a revoked
// key is refused, limits are saved, and the try-it runs as the client.
// Started by tests/tests/browser.rs:
//   ADMIN_URL, ADMIN_TOKEN, PUBLIC_URL, SCREENSHOTS (folder), CHROMIUM (binary)
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const admin = process.env.ADMIN_URL;
const token = process.env.ADMIN_TOKEN;
const publicUrl = process.env.PUBLIC_URL;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
const page = await context.newPage();
page.on("dialog", (d) => d.accept());
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const step = (what) => console.log(`clients: ${what}`);

/** The public API's status for an order request sent with `key`. */
const status = async (key) =>
  (await fetch(`${publicUrl}/api/orders/A1`, { headers: { Authorization: `Bearer ${key}` } })).status;
/** Waits (bounded) until `check` holds. */
async function eventually(check, within = 3000) {
  const until = Date.now() + within;
  for (;;) {
    if (await check()) return;
    assert.ok(Date.now() < until, "condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}
const shownSecret = async () => {
  await page.locator("#client-secret:not([hidden]) #secret-value").waitFor();
  return page.locator("#secret-value").inputValue();
};

try {
  await page.goto(`${admin}/#token=${token}`);
  await page.click("a[data-view=clients]");
  await page.locator("#clients-table tbody").waitFor();
  step("clients page open");

  // Create a client: its key is shown once, and works.
  await page.click("#new-client");
  await page.fill("#client-form [name=name]", "acme");
  await page.fill("#client-form [name=description]", "Acme Corp");
  await page.fill("#client-form [name=routes]", "nope");
  await page.click("#client-form button.primary");
  const fieldError = page.locator("#client-form [name=routes] + .field-error");
  await fieldError.waitFor();
  assert.match(await fieldError.innerText(), /no route named/);
  step("validation message next to the field");
  await page.fill("#client-form [name=routes]", "order");
  await page.fill("#client-form [name='rate.per_second']", "50");
  await page.fill("#client-form [name='rate.burst']", "100");
  await page.click("#client-form button.primary");
  const first = await shownSecret();
  assert.match(first, /^bgk_[A-Za-z0-9_-]{43}$/);
  await page.locator("#clients-table tr[data-name=acme] td.keys:text('1')").waitFor();
  await page.click("#copy-secret");
  await page.locator("#toast:has-text('copied')").waitFor();
  await shot("clients-key-once");
  await eventually(async () => (await status(first)) === 200);
  step("client acme created; its key, shown once, works");

  // A second key: both work.
  await page.click("#add-key");
  await page.locator("#clients-table tr[data-name=acme] td.keys:text('2')").waitFor();
  const second = await shownSecret();
  assert.notEqual(second, first);
  await eventually(async () => (await status(second)) === 200);
  assert.equal(await status(first), 200);
  step("second key works beside the first");

  // Revoke the first: refused, the second still works.
  const firstId = await page.locator("#keys-table tbody tr").first().getAttribute("data-key");
  await page.click(`#keys-table tr[data-key=${firstId}] button:text('Revoke')`);
  await page.locator(`#keys-table tr[data-key=${firstId}]`).waitFor({ state: "detached" });
  await eventually(async () => (await status(first)) === 401, 1000);
  assert.equal(await status(second), 200);
  step("first key revoked: 401; second still 200");

  // Limits.
  await page.fill("#client-form [name=max_pending]", "3");
  await page.fill("#client-form [name=max_streams]", "2");
  await page.click("#client-form button.primary");
  await page.locator("#clients-table tr[data-name=acme] td:nth-child(5):text('3')").waitFor();
  await page.locator("#clients-table tr[data-name=acme] td:nth-child(6):text('2')").waitFor();
  assert.equal(await status(second), 200, "the edit kept the key");
  await shot("clients");
  step("limits saved, keys kept");

  // The try-it as the client.
  await page.click("a[data-view=try]");
  await page.locator("#try-client option[value=acme]").waitFor({ state: "attached" });
  await page.selectOption("#try-route", "order");
  await page.selectOption("#try-client", "acme");
  await page.click("#try-form button.primary");
  await page.locator("#try-result .source").first().waitFor();
  assert.match(await page.locator("#try-result .big-status").innerText(), /200/);
  step("try it as acme");

  assert.deepEqual(consoleErrors, []);
  console.log("clients: all steps passed");
} catch (e) {
  await shot("clients-failure").catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
