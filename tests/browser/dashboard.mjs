// Opens the live page in headless Chromium (Debian's, /usr/bin/chromium) and reports what it
// shows: BASE_URL, CAMPAIGN (an id whose row to read), WATCH_MS (how long to count the page's
// data requests), SCREENSHOT (a path), TOKEN (the admin token, sent as a bearer token).
// Prints one JSON line: the row's numbers, the summary the API gives, the data requests counted.
import { chromium } from 'playwright-core';

const { BASE_URL, CAMPAIGN, SCREENSHOT } = process.env;
const WATCH_MS = Number(process.env.WATCH_MS || 5000);
const headers = process.env.TOKEN ? { Authorization: `Bearer ${process.env.TOKEN}` } : {};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({
    extraHTTPHeaders: headers,
    viewport: { width: 1280, height: 800 },
  });
  const page = await context.newPage();
  const dataRequests = [];
  page.on('request', (request) => {
    if (new URL(request.url()).pathname === '/dashboard/data') dataRequests.push(Date.now());
  });
  await page.goto(`${BASE_URL}/dashboard`);
  const row = page.locator(`tr[data-id="${CAMPAIGN}"]`);
  await row.waitFor({ timeout: 10_000 });
  const started = Date.now();
  await page.waitForTimeout(WATCH_MS);
  const watched = Date.now() - started;
  const counted = dataRequests.filter((at) => at >= started).length;
  const summary = await (await fetch(`${BASE_URL}/campaigns/${CAMPAIGN}`)).json();
  // The page shows the figures of its last poll: wait until it has caught up with the API's.
  await page.waitForFunction(
    ([id, remaining]) =>
      document.querySelector(`tr[data-id="${id}"]`)?.dataset.remaining === String(remaining),
    [CAMPAIGN, summary.remaining],
    { timeout: 5_000 },
  );
  const shown = await row.evaluate((tr) => ({
    remaining: Number(tr.dataset.remaining),
    redeemed: Number(tr.dataset.redeemed),
    text: tr.innerText,
  }));
  if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const phoneOverflow = await page.evaluate(
    () => document.documentElement.scrollWidth > window.innerWidth,
  );
  console.log(JSON.stringify({ shown, summary, watched, counted, phoneOverflow }));
} finally {
  await browser.close();
}
