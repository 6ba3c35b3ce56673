// Drives headless Chromium (Debian's, through playwright-core) through the Outpost dashboard
// of a running demo fleet and prints what it saw as one JSON document on stdout; the Rust test
// `tests/tests/dashboard.rs` compares it with the coordinator's API and asserts.
//
// Environment: DASHBOARD_URL (the coordinator, e.g. http://127.0.0.1:7400), VIEWER_TOKEN,
// OPERATOR_TOKEN, SCREENSHOTS (a directory), CHROMIUM (default /usr/bin/chromium).
// Exit 0 with the JSON, or 1 with the error on stderr.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.env.DASHBOARD_URL;
const shots = process.env.SCREENSHOTS;
if (!base || !process.env.VIEWER_TOKEN || !process.env.OPERATOR_TOKEN || !shots) {
  console.error("set DASHBOARD_URL, VIEWER_TOKEN, OPERATOR_TOKEN and SCREENSHOTS");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // As root in CI; the machine has no network beyond loopback, so nothing phones home.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const out = { console_errors: [], failed_requests: [], outside_requests: [] };

async function session(token) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
  page.on("requestfailed", (r) => out.failed_requests.push(r.url()));
  page.on("request", (r) => { if (!r.url().startsWith(base)) out.outside_requests.push(r.url()); });
  // Sign in the way a person does: the dashboard sends us to its sign-in page.
  await page.goto(`${base}/ui`);
  const login = { url: page.url(), has_form: await page.locator("input[name=token]").count() };
  await page.fill("input[name=token]", token);
  await Promise.all([page.waitForURL(/\/ui$/), page.click("button[type=submit]")]);
  return { context, page, login };
}

const table = (page, selector, attrs) =>
  page.$$eval(selector, (rows, attrs) => rows.map((r) => Object.fromEntries(attrs.map((a) => [a, r.getAttribute(`data-${a}`)]))), attrs);

try {
  // 1. A viewer signs in.
  const viewer = await session(process.env.VIEWER_TOKEN);
  const page = viewer.page;
  out.login = viewer.login;
  out.who = { user: await page.getAttribute(".who", "data-user"), role: await page.getAttribute(".who", "data-role") };

  // 2. Fleet.
  out.fleet = {
    devices: await page.$$eval("tr[data-device]", (rows) => rows.map((r) => ({
      id: r.getAttribute("data-device"),
      status: r.getAttribute("data-status"),
      running: [...r.querySelectorAll("[data-running]")].map((s) => `${s.getAttribute("data-running")} ${s.getAttribute("data-slot")} ${s.getAttribute("data-state")}`),
      drifting: r.querySelector("[data-drifting]")?.getAttribute("data-drifting") ?? "",
    }))),
    by_site: await table(page, "table[data-by=site] tr[data-group]", ["group"]),
    tiles: await page.$$eval(".tile", (ts) => Object.fromEntries(ts.map((t) => [t.getAttribute("data-tile"), t.querySelector("b").textContent]))),
  };
  await page.screenshot({ path: `${shots}/fleet.png`, fullPage: true });
  // A site's row filters the device table to that site.
  await Promise.all([page.waitForURL(/\?q=site%3Dsite-c/), page.click("table[data-by=site] tr[data-group='site-c'] a")]);
  out.fleet.site_c = await page.$$eval("tr[data-device]", (rows) => rows.map((r) => r.getAttribute("data-device")));
  await page.goto(`${base}/ui`);

  // 3. Live updates: the page re-renders itself without a reload.
  const rendered = await page.getAttribute("#main", "data-rendered-ms");
  await page.waitForFunction((r) => document.getElementById("main").getAttribute("data-rendered-ms") !== r, rendered, { timeout: 20000 });
  out.live = {
    before: rendered,
    after: await page.getAttribute("#main", "data-rendered-ms"),
    indicator: await page.textContent("#live"),
    transport: await page.getAttribute("#live", "data-transport"),
  };

  // 4. Rollouts: the list, then the rolled-back one with its gates.
  await page.click("nav a[href='/ui/rollouts']");
  out.rollouts = await table(page, "tr[data-rollout]", ["rollout", "phase"]);
  const rolledBack = out.rollouts.find((r) => r.phase === "rolled_back");
  await page.click(`tr[data-rollout='${rolledBack.rollout}'] a`);
  await page.waitForSelector("table[data-table=gates]");
  out.rollout = {
    id: await page.getAttribute("section.summary", "data-rollout"),
    phase: await page.getAttribute("section.summary", "data-phase"),
    gates: await table(page, "table[data-table=gates] tr[data-gate]", ["gate", "verdict", "candidate", "baseline", "limit"]),
    steps: await table(page, "ol.steps li", ["step", "state"]),
    incident_link: await page.locator("a[href^='/ui/incidents/']").count(),
    forms: await page.locator("main form").count(),
    // The analysis over time: a chart per gate, its points' hover values and its markers.
    analysis: await page.$$eval("figure.chart[data-chart^='gate-']", (fs) => fs.map((f) => ({
      id: f.getAttribute("data-chart"),
      series: [...f.querySelectorAll("g.series")].map((g) => ({
        name: g.getAttribute("data-series"),
        values: g.getAttribute("data-values").split(",").map((v) => (v === "" ? null : Number(v))),
        hovers: [...g.querySelectorAll("circle.hover title")].map((t) => t.textContent),
      })),
      markers: [...f.querySelectorAll("g.marker")].map((m) => m.getAttribute("data-marker")),
    }))),
  };
  await page.screenshot({ path: `${shots}/rollout.png`, fullPage: true });

  // 5. The incident it left.
  await page.click("main a[href^='/ui/incidents/']");
  await page.waitForSelector("section.summary[data-incident]");
  out.incident = {
    id: await page.getAttribute("section.summary", "data-incident"),
    status: await page.getAttribute("section.summary", "data-status"),
    failed_gate: await page.getAttribute("[data-failed-gate]", "data-failed-gate"),
    failed_text: await page.textContent("[data-failed-gate]"),
    devices: await page.$$eval("ul.devices li", (ls) => ls.map((l) => l.getAttribute("data-device"))),
    timeline: await page.locator("ol.timeline li").count(),
    forms: await page.locator("main form").count(),
  };
  await page.screenshot({ path: `${shots}/incident.png`, fullPage: true });

  // 6. Monitoring: charts and the drift table.
  await page.click("nav a[href='/ui/models']");
  await page.click("tr[data-model=bc] a");
  await page.waitForSelector("figure.chart[data-chart=drift]");
  out.model = {
    charts: await page.$$eval("figure.chart", (fs) => fs.map((f) => ({
      id: f.getAttribute("data-chart"),
      svg: !!f.querySelector("svg"),
      series: [...f.querySelectorAll("g.series")].map((g) => ({
        name: g.getAttribute("data-series"),
        values: g.getAttribute("data-values").split(",").map((v) => (v === "" ? null : Number(v))),
        drawn: (g.querySelector("path")?.getAttribute("d") ?? "").length > 0 || !!g.querySelector("circle"),
      })),
    }))),
    drift: await table(page, "table[data-table=drift] tr[data-feature]", ["feature", "windows", "drifted"]),
    slo: await table(page, "table[data-table=slo] tr[data-objective]", ["objective", "compliant"]),
    versions: await table(page, "table[data-table=model-versions] tr[data-version]", ["version", "stage"]),
    markers: await page.$$eval("figure.chart[data-chart=accuracy] g.marker", (ms) => ms.map((m) => m.getAttribute("data-marker"))),
    by_site: await page.$$eval("table[data-breakdown=site] tr[data-group]", (rows) => rows.map((r) => ({
      site: r.getAttribute("data-group"),
      cells: [...r.querySelectorAll("td")].map((td) => td.textContent),
    }))),
  };
  await page.screenshot({ path: `${shots}/model.png`, fullPage: true });

  // 7. The model card of a version, as the dashboard serves it.
  await page.click("table[data-table=model-versions] tr[data-version='1.0.0'] a:text('HTML')");
  out.card = {
    title: await page.title(),
    text: (await page.textContent("body")).slice(0, 20000),
    tables: await page.locator("body table").count(),
    headings: await page.locator("body h2").count(),
  };
  await page.screenshot({ path: `${shots}/card.png`, fullPage: true });

  // 8. A viewer cannot change anything: no buttons were offered (counted above), and forged
  // posts with the session's own CSRF secret are refused — by the dashboard for lack of role,
  // by the API because a cookie is not a bearer token.
  await page.goto(`${base}/ui/incidents/${out.incident.id}`);
  const csrf = await page.getAttribute("form[action='/ui/logout'] input[name=csrf]", "value");
  out.viewer_mutations = await page.evaluate(async ({ csrf, incident, rollout }) => {
    const post = async (url, body) => {
      const r = await fetch(url, { method: "POST", credentials: "same-origin", redirect: "manual",
        headers: { "Content-Type": "application/x-www-form-urlencoded" }, body });
      return { url, status: r.status };
    };
    return [
      await post(`/ui/incidents/${incident}/close`, `csrf=${csrf}`),
      await post(`/ui/rollouts/${rollout}/abort-revert`, `csrf=${csrf}`),
      await post(`/ui/rollouts/${rollout}/pause`, `csrf=${csrf}`),
      await post(`/api/v1/incidents/${incident}/close`, ""),
      await post(`/api/v1/rollouts/${rollout}/pause`, ""),
    ];
  }, { csrf, incident: out.incident.id, rollout: out.rollouts[0].rollout });

  await page.reload();
  out.incident_status_after_viewer = await page.getAttribute("section.summary", "data-status");

  // 9. An operator can: the same incident page offers "Close incident", and it works.
  const operator = await session(process.env.OPERATOR_TOKEN);
  await operator.page.goto(`${base}/ui/incidents/${out.incident.id}`);
  out.operator = { forms_before: await operator.page.locator("main form[data-action=close]").count() };
  await Promise.all([operator.page.waitForURL(/\/ui\/incidents\//), operator.page.click("main form[data-action=close] button")]);
  out.operator.status_after = await operator.page.getAttribute("section.summary", "data-status");
  await operator.page.screenshot({ path: `${shots}/incident-closed-by-operator.png`, fullPage: true });

  // 10. Sign-out ends the session: the page wants a sign-in again.
  await page.click("form[action='/ui/logout'] button");
  await page.goto(`${base}/ui/rollouts`);
  out.after_logout = page.url();

  console.log(JSON.stringify(out));
  await browser.close();
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  await browser.close();
  process.exit(1);
}
