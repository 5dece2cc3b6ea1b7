// The web image's nginx config, for real: Debian's nginx with the same template, on a
// free port, in front of a running urna-api (private Redis prefix). Run by
// scripts/ui-test.sh with `node --test`.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startPipeline, webDir } from './pipeline.mjs';

let p;

before(async () => {
  p = await startPipeline({ producers: false });
});

after(async () => {
  if (p) {
    const prefix = p.names.prefix;
    execFileSync('redis-cli', ['DEL', `${prefix}:total`, `${prefix}:sources`]);
    await p.stop();
  }
});

test('serves the built app, with client routes falling back to index.html', async () => {
  const index = await fetch(`${p.web}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /text\/html/);
  const html = await index.text();
  assert.match(html, /<div id="app"><\/div>/);
  const route = await fetch(`${p.web}/some/client/route`);
  assert.equal(await route.text(), html);
  const asset = readdirSync(join(webDir, 'dist/assets')).find((f) => f.endsWith('.js'));
  const js = await fetch(`${p.web}/assets/${asset}`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('cache-control'), /immutable/);
  assert.equal((await fetch(`${p.web}/assets/missing.js`)).status, 404);
});

test('proxies /api, errors and all', async () => {
  const direct = await (await fetch(`${p.api}/api/results`)).json();
  const proxied = await fetch(`${p.web}/api/results`);
  assert.equal(proxied.status, 200);
  assert.deepEqual(await proxied.json(), direct);
  const bad = await fetch(`${p.web}/api/logs?limit=0`);
  assert.equal(bad.status, 400);
  assert.deepEqual(await bad.json(), { error: 'limit must be an integer from 1 to 100', field: 'limit' });
  const unknown = await fetch(`${p.web}/api/nope`);
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error, 'no such API route');
});

test('passes event streams through unbuffered', async () => {
  const controller = new AbortController();
  const response = await fetch(`${p.web}/api/results/stream`, { signal: controller.signal });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /text\/event-stream/);
  assert.equal(response.headers.get('content-length'), null);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const nextEvent = async () => {
    for (;;) {
      const end = text.indexOf('\n\n');
      if (end >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (data) return JSON.parse(data);
        continue;
      }
      const { value, done } = await reader.read();
      assert.ok(!done, 'stream ended');
      text += decoder.decode(value, { stream: true });
    }
  };
  const first = await nextEvent();
  assert.equal(first.total, 0);
  // A change in Redis arrives on the open connection: nginx did not hold it back.
  execFileSync('redis-cli', ['INCRBY', `${p.names.prefix}:total`, '42']);
  const second = await nextEvent();
  assert.equal(second.total, 42);
  controller.abort();
});

test('limits event streams per client address: the 9th is a 429, other routes are not limited', async () => {
  const controllers = [];
  try {
    const open = async () => {
      const controller = new AbortController();
      controllers.push(controller);
      return fetch(`${p.web}/api/results/stream`, { signal: controller.signal });
    };
    for (let i = 0; i < 8; i++) {
      assert.equal((await open()).status, 200, `stream ${i + 1}`);
    }
    assert.equal((await open()).status, 429);
    assert.equal((await fetch(`${p.web}/api/results`)).status, 200);
  } finally {
    for (const c of controllers) c.abort();
  }
});

test('an unreachable API is a 502 from nginx, not a hang', async () => {
  await p.stopApi();
  try {
    const r = await fetch(`${p.web}/api/results`);
    assert.equal(r.status, 502);
  } finally {
    await p.startApi();
  }
  assert.equal((await fetch(`${p.web}/api/results`)).status, 200);
});
