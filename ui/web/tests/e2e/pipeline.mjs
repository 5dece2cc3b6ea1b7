// Starts a private pipeline for the UI tests: both producers, one consumer member, the
// API and Debian's nginx with the web image's config, on free ports, with a private
// Kafka topic, consumer group, Redis prefix and Mongo collection — so the tests run
// beside other tests and `make up` on the same stack.
//
// Binaries: URNA_BIN_DIR (default target/debug); the vote module: URNA_MODULE_DIR
// (default target/wasm32-wasip1/wasm). scripts/ui-test.sh builds both.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';

export const root = resolve(import.meta.dirname, '../../../..');
export const webDir = resolve(import.meta.dirname, '../..');
const binDir = process.env.URNA_BIN_DIR ?? join(root, 'target/debug');
export const moduleDir = process.env.URNA_MODULE_DIR ?? join(root, 'target/wasm32-wasip1/wasm');

export async function freePort() {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => res(port));
    });
  });
}

export async function waitFor(what, check, timeoutMs = 60_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function ready(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
  return r.ok;
}

/** A child process whose output goes to a log file; stop() ends it (and waits). */
class Service {
  constructor(name, command, args, env, logDir) {
    this.name = name;
    this.command = command;
    this.args = args;
    this.env = env;
    this.logFile = join(logDir, `${name}.log`);
    this.child = null;
  }

  start() {
    if (!existsSync(this.command)) throw new Error(`${this.name}: ${this.command} is missing (build it first)`);
    const out = openSync(this.logFile, 'a');
    this.child = spawn(this.command, this.args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', ...this.env },
      stdio: ['ignore', out, out],
    });
    this.exited = new Promise((res) => this.child.once('exit', (code, signal) => res({ code, signal })));
    return this;
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  log() {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }
}

/** Renders the web image's nginx template the way its envsubst step does. */
export function renderNginx({ port, upstream, webRoot }) {
  const template = readFileSync(join(webDir, 'nginx/default.conf.template'), 'utf8');
  return template
    .replaceAll('${PORT}', String(port))
    .replaceAll('${URNA_API_UPSTREAM}', upstream)
    .replaceAll('${URNA_WEB_ROOT}', webRoot);
}

/** Debian's nginx in the foreground with the rendered config, in a private prefix. */
export function nginxService({ port, upstream, webRoot, dir, logDir }) {
  const prefix = join(dir, 'nginx');
  mkdirSync(join(prefix, 'logs'), { recursive: true });
  writeFileSync(join(prefix, 'default.conf'), renderNginx({ port, upstream, webRoot }));
  const mimeTypes = existsSync('/etc/nginx/mime.types') ? 'include /etc/nginx/mime.types;' : '';
  writeFileSync(
    join(prefix, 'nginx.conf'),
    `worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log warn;
events { worker_connections 256; }
http {
  ${mimeTypes}
  default_type application/octet-stream;
  access_log ${prefix}/logs/access.log;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  include ${prefix}/default.conf;
}
`,
  );
  return new Service('nginx', process.env.URNA_NGINX ?? '/usr/sbin/nginx', ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-g', 'daemon off;'], {}, logDir);
}

/**
 * Starts the pipeline. `producers: false` starts only the API and nginx (seeded data).
 * Returns urls, names and handles; `stop()` ends everything it started.
 */
export async function startPipeline({ producers = true } = {}) {
  const tag = randomUUID().slice(0, 8);
  const dir = mkdtempSync(join(tmpdir(), `urna-ui-${tag}-`));
  const logDir = process.env.URNA_UI_LOG_DIR ?? dir;
  mkdirSync(logDir, { recursive: true });
  const names = {
    topic: `ui-e2e-${tag}`,
    group: `ui-e2e-${tag}`,
    prefix: `ui-e2e-${tag}`,
    db: 'urna_test',
    collection: `logs_ui_${tag}`,
  };
  const ports = {
    wasm: await freePort(),
    grpcServer: await freePort(),
    grpcMetrics: await freePort(),
    grpc: await freePort(),
    consumer: await freePort(),
    api: await freePort(),
    web: await freePort(),
  };
  const kafka = { URNA_KAFKA_TOPIC: names.topic };
  const sinks = {
    URNA_GROUP_ID: names.group,
    URNA_REDIS_PREFIX: names.prefix,
    URNA_MONGO_DB: names.db,
    URNA_MONGO_COLLECTION: names.collection,
  };
  const services = [];
  const bin = (name) => join(binDir, name);
  const apiEnv = {
    ...kafka,
    ...sinks,
    URNA_LISTEN: `127.0.0.1:${ports.api}`,
    URNA_RACE_PRODUCERS: `wasm=http://127.0.0.1:${ports.wasm},grpc=http://127.0.0.1:${ports.grpc}`,
    URNA_WEB_DIR: join(webDir, 'dist'),
  };
  const api = new Service('api', bin('urna-api'), [], apiEnv, logDir);
  const nginx = nginxService({ port: ports.web, upstream: `http://127.0.0.1:${ports.api}`, webRoot: join(webDir, 'dist'), dir, logDir });
  const pipeline = {
    names,
    ports,
    dir,
    logDir,
    web: `http://127.0.0.1:${ports.web}`,
    api: `http://127.0.0.1:${ports.api}`,
    wasm: `http://127.0.0.1:${ports.wasm}`,
    grpc: `http://127.0.0.1:${ports.grpc}`,
    services,
    apiService: api,
    async stopApi() {
      await api.stop();
    },
    async startApi() {
      api.start();
      await waitFor('API ready', () => ready(`${pipeline.api}/readyz`), 30_000);
    },
    async stop() {
      for (const s of [...services].reverse()) await s.stop();
      if (!process.env.URNA_UI_LOG_DIR) rmSync(dir, { recursive: true, force: true });
    },
    logs() {
      return services.map((s) => `--- ${s.name}\n${s.log().slice(-4000)}`).join('\n');
    },
  };
  try {
    if (producers) {
      const host = new Service('wasm-host', bin('urna-host'), [], { ...kafka, URNA_LISTEN: `127.0.0.1:${ports.wasm}`, URNA_MODULE_DIR: moduleDir, URNA_WASM_RUNTIME: 'wasmtime', URNA_FUNCTION_STORE: 'redis', URNA_REDIS_PREFIX: names.prefix }, logDir);
      const server = new Service('grpc-server', bin('urna-grpc-server'), [], { ...kafka, URNA_GRPC_LISTEN: `127.0.0.1:${ports.grpcServer}`, URNA_METRICS_LISTEN: `127.0.0.1:${ports.grpcMetrics}` }, logDir);
      const client = new Service('grpc-client', bin('urna-grpc-client'), [], { URNA_LISTEN: `127.0.0.1:${ports.grpc}`, URNA_GRPC_SERVER_URL: `http://127.0.0.1:${ports.grpcServer}` }, logDir);
      const consumer = new Service('consumer', bin('urna-consumer'), [], { ...kafka, ...sinks, URNA_DLQ_TOPIC: `${names.topic}.dlq`, URNA_LISTEN: `127.0.0.1:${ports.consumer}`, URNA_MEMBER_NAME: 'ui-e2e-1' }, logDir);
      for (const s of [host, server, client, consumer]) services.push(s.start());
    }
    services.push(api.start(), nginx.start());
    await waitFor('API ready', () => ready(`${pipeline.api}/readyz`));
    await waitFor('nginx ready', () => ready(`${pipeline.web}/nginx-health`));
    if (producers) {
      await waitFor('Wasm producer ready', () => ready(`${pipeline.wasm}/readyz`), 120_000);
      await waitFor('gRPC producer ready', () => ready(`${pipeline.grpc}/readyz`), 120_000);
      await waitFor('consumer ready', () => ready(`http://127.0.0.1:${ports.consumer}/readyz`), 120_000);
    }
  } catch (e) {
    const logs = pipeline.logs();
    await pipeline.stop();
    throw new Error(`${e.message}\n${logs}`);
  }
  return pipeline;
}

/** Posts one vote; returns the status and parsed body. */
export async function postVote(base, vote) {
  const r = await fetch(`${base}/votes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(vote),
  });
  return { status: r.status, body: await r.json() };
}
