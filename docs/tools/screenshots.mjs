// Screenshots for docs/manual.md from the real running system: Locust's web UI during a
// run against both producers, the Wasm producer's /metrics page, and the web app's race
// panel under that load. Everything runs on a private pipeline (the UI tests' helper:
// both producers, a consumer member, the API, nginx) on free ports with its own topic,
// prefix and collection, so it runs beside `make up`; it is stopped again at the end.
//
//   node docs/tools/screenshots.mjs           (from the repo root; the stack must be up,
//                                               debug binaries and the vote module built,
//                                               ui/web/dist built, Locust installed)
// Env: URNA_SHOTS_DIR (default docs/img), URNA_CHROMIUM (default /usr/bin/chromium),
// URNA_SHOTS_RATE (votes/s per producer, default 60), URNA_SHOTS_SECONDS (load before the
// shots, default 25). The other three images of the manual (terminal, dashboard, race,
// phone) come from the web app's own browser test (scripts/ui-test.sh).

import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort, startPipeline, waitFor } from '../../ui/web/tests/e2e/pipeline.mjs';

const root = resolve(import.meta.dirname, '../..');
// playwright-core lives in the web app's node_modules (npm ci in ui/web).
const { chromium } = createRequire(join(root, 'ui/web/package.json'))('playwright-core');
const shots = process.env.URNA_SHOTS_DIR ?? join(root, 'docs/img');
const rate = Number(process.env.URNA_SHOTS_RATE ?? 60);
const loadSeconds = Number(process.env.URNA_SHOTS_SECONDS ?? 25);

const tmp = mkdtempSync(join(tmpdir(), 'urna-shots-'));
let p;
let locust;
let browser;

async function json(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

try {
  mkdirSync(shots, { recursive: true });
  p = await startPipeline();
  console.log(`pipeline: wasm ${p.wasm}, grpc ${p.grpc}, web ${p.web}`);

  const votes = join(tmp, 'votes.jsonl');
  execFileSync('python3', ['locust/gen_votes.py', '--count', '5000', '--invalid-share', '0.05', '--seed', '7', '--out', votes], { cwd: root, stdio: 'inherit' });

  // Locust with its web UI, started at once (--autostart), both producer classes, paced.
  const webPort = await freePort();
  const out = openSync(join(tmp, 'locust.log'), 'a');
  locust = spawn('python3', [
    '-m', 'locust', '-f', 'locust/locustfile.py', '--votes', votes, '--wasm-host', p.wasm, '--grpc-host', p.grpc,
    '--vote-rate', String(rate), '-u', '16', '-r', '16', '--autostart',
    '--web-host', '127.0.0.1', '--web-port', String(webPort),
  ], { cwd: root, stdio: ['ignore', out, out] });
  const locustUrl = `http://127.0.0.1:${webPort}`;
  await waitFor('Locust web UI', async () => (await fetch(locustUrl)).ok, 60_000, 250);
  // Enough requests for both classes that the table and charts mean something.
  await waitFor('Locust has sent load to both producers', async () => {
    const s = await json(`${locustUrl}/stats/requests`);
    const n = (name) => s.stats.filter((r) => r.name.includes(name)).reduce((a, r) => a + r.num_requests, 0);
    return s.stats.length > 0 && n('wasm') > rate * loadSeconds * 0.8 && n('grpc') > rate * loadSeconds * 0.8;
  }, (loadSeconds + 60) * 1000, 500);

  browser = await chromium.launch({ executablePath: process.env.URNA_CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'], headless: true });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });

  await page.goto(locustUrl);
  await page.getByText('RUNNING', { exact: false }).first().waitFor({ timeout: 15_000 });
  await page.getByRole('cell', { name: /wasm/i }).first().waitFor({ timeout: 15_000 });
  await page.screenshot({ path: join(shots, 'locust.png') });
  await page.getByRole('tab', { name: /charts/i }).click();
  await page.locator('canvas, svg').first().waitFor({ timeout: 15_000 });
  await page.screenshot({ path: join(shots, 'locust-charts.png') });

  // The web app's race panel with the live load on both producers.
  await page.setViewportSize({ width: 1280, height: 1000 });
  await page.goto(p.web);
  for (const producer of ['wasm', 'grpc']) {
    const lane = page.locator(`[data-testid="lane-${producer}"]`);
    await waitFor(`${producer} lane shows traffic`, async () => Number((await lane.locator('[data-testid="accepted"]').innerText()).trim()) > 0, 20_000, 250);
  }
  await page.locator('[data-testid="race"]').screenshot({ path: join(shots, 'race-load.png') });
  // The whole page once the log terminal is full and the votes/s line has points.
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="log-row"]').length === 20, null, { timeout: 20_000 });
  await page.waitForFunction(
    () => ['grpc', 'wasm'].every((p) => (document.querySelector('[data-testid="rate-chart"]')?.getAttribute(`data-recent-${p}`) ?? '').split(',').filter((v) => Number(v) > 0).length >= 5),
    null,
    { timeout: 30_000 },
  );
  await page.screenshot({ path: join(shots, 'dashboard-load.png'), fullPage: true });

  // A producer's own Prometheus text, as the browser shows it: the Wasm stages.
  const metrics = await (await fetch(`${p.wasm}/metrics`)).text();
  if (!/urna_wasm_invocations_total\{[^}]*outcome="accepted"/.test(metrics)) throw new Error('the Wasm producer reports no accepted invocations');
  await page.setViewportSize({ width: 1100, height: 900 });
  await page.goto(`${p.wasm}/metrics`);
  await page.evaluate(() => {
    // Scroll to the Wasm stage metrics: the part the manual talks about.
    const pre = document.querySelector('pre') ?? document.body;
    const at = pre.textContent.indexOf('# HELP urna_wasm_');
    if (at > 0) {
      const range = document.createRange();
      const node = pre.firstChild;
      range.setStart(node, at);
      range.setEnd(node, at + 1);
      window.scrollTo(0, range.getBoundingClientRect().top + window.scrollY - 8);
    }
  });
  await page.screenshot({ path: join(shots, 'metrics-wasm.png') });
  console.log(`screenshots in ${shots}: locust.png locust-charts.png race-load.png dashboard-load.png metrics-wasm.png`);
} catch (e) {
  console.error(String(e?.stack ?? e));
  try { console.error(readFileSync(join(tmp, 'locust.log'), 'utf8').slice(-3000)); } catch { /* no log yet */ }
  if (p) console.error(p.logs());
  process.exitCode = 1;
} finally {
  await browser?.close();
  if (locust && locust.exitCode === null) {
    const exited = new Promise((r) => locust.once('exit', r));
    locust.kill('SIGTERM');
    await exited;
  }
  if (p) {
    // The private Redis keys go with the pipeline, as in the UI tests.
    const keys = execFileSync('redis-cli', ['--scan', '--pattern', `${p.names.prefix}:*`], { encoding: 'utf8' }).split('\n').filter(Boolean);
    if (keys.length) execFileSync('redis-cli', ['DEL', ...keys]);
    await p.stop();
  }
  rmSync(tmp, { recursive: true, force: true });
}
