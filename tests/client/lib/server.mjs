// Starts the real sealpost binary for a test and stops it again.
//
//   const server = await startServer('embedded');
//   ... fetch(server.baseUrl + '/v1/...') ...
//   await server.stop();
//
// Each start gets a fresh data directory (and, for the scale-out backend, a
// fresh Postgres schema and Redis key prefix), so tests never share state.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';

const CLIENT_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
const LISTENING_RE = /listening on (http:\/\/127\.0\.0\.1:\d+)/;
// Strips terminal colour codes, in case the log formatter emits them.
const ANSI_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Every backend this suite knows how to run. */
export const ALL_BACKENDS = Object.freeze(['embedded', 'scale-out']);

/**
 * The backends to run: SEALPOST_TEST_BACKENDS (comma list) or all of them.
 * An unknown or empty selection throws, so a typo fails loudly instead of
 * running nothing.
 */
export function selectedBackends(env = process.env) {
  const raw = env.SEALPOST_TEST_BACKENDS;
  if (raw === undefined || raw.trim() === '') {
    return [...ALL_BACKENDS];
  }
  const picked = [...new Set(raw.split(',').map((s) => s.trim()).filter((s) => s !== ''))];
  const unknown = picked.filter((b) => !ALL_BACKENDS.includes(b));
  if (unknown.length > 0) {
    throw new Error(
      `SEALPOST_TEST_BACKENDS names unknown backend(s) ${unknown.join(', ')}; known: ${ALL_BACKENDS.join(', ')}`,
    );
  }
  if (picked.length === 0) {
    throw new Error('SEALPOST_TEST_BACKENDS selects no backend');
  }
  return picked;
}

/** Backends to run, computed once at import (see selectedBackends). */
export const backends = selectedBackends();

/**
 * Absolute path of the server binary: SEALPOST_BIN or <repo>/target/debug/sealpost.
 * A relative SEALPOST_BIN is taken from the directory the command was typed
 * in: npm runs scripts from the package directory but records the caller's
 * directory in INIT_CWD.
 */
export function serverBinary(env = process.env) {
  const configured = env.SEALPOST_BIN;
  if (configured === undefined || configured === '') {
    return resolve(CLIENT_DIR, '../../target/debug/sealpost');
  }
  return isAbsolute(configured) ? configured : resolve(env.INIT_CWD || process.cwd(), configured);
}

/** The last part of a long output, for error messages. */
function tail(text, max = 8000) {
  return text.length <= max ? text : `[... ${text.length - max} earlier characters omitted ...]\n${text.slice(-max)}`;
}

function randomHex(bytes = 6) {
  return randomBytes(bytes).toString('hex');
}

/** Environment variables that select and isolate one backend. */
function backendEnv(backend, env) {
  switch (backend) {
    case 'embedded':
      // No database settings at all: the server uses SQLite in its data dir.
      return {};
    case 'scale-out': {
      const id = randomHex();
      return {
        SEALPOST_DATABASE_URL: env.SEALPOST_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test',
        SEALPOST_DATABASE_SCHEMA: `node_${id}`,
        SEALPOST_REDIS_URL: env.SEALPOST_TEST_REDIS_URL || 'redis://127.0.0.1:6379',
        SEALPOST_REDIS_KEY_PREFIX: `node_${id}:`,
      };
    }
    default:
      throw new Error(`unknown backend ${JSON.stringify(backend)}; known: ${ALL_BACKENDS.join(', ')}`);
  }
}

// Variables from the test's own environment that must not leak into the
// server and change which backend it runs.
const SCRUBBED_VARS = [
  'SEALPOST_DATABASE_URL',
  'SEALPOST_DATABASE_SCHEMA',
  'SEALPOST_REDIS_URL',
  'SEALPOST_REDIS_KEY_PREFIX',
  'SEALPOST_LISTEN',
  'SEALPOST_METRICS_LISTEN',
  'SEALPOST_DATA_DIR',
];

// Children still running; killed if the test process exits without stopping them.
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * Finds the API's listening URL in the output seen so far. A line whose text
 * before "listening on" mentions metrics is the metrics listener, not the
 * API, and is skipped.
 */
function findListeningUrl(text) {
  for (const line of text.split('\n')) {
    const m = LISTENING_RE.exec(line.replace(ANSI_RE, ''));
    if (m && !/metric/i.test(line.replace(ANSI_RE, '').slice(0, m.index))) {
      return m[1];
    }
  }
  return null;
}

/**
 * Starts `SEALPOST_BIN serve` for `backend` and resolves once it logs its
 * listening address. Rejects (with the collected output) if the binary is
 * missing, exits early, or does not come up within 30 s.
 *
 * Resolves to {
 *   backend, baseUrl, dataDir, env,
 *   output(): string      - everything written to stdout and stderr so far,
 *   stop(): Promise<{code, signal}> - SIGTERM, wait for exit, remove the data dir,
 *   exited: boolean,
 * }
 *
 * `extraEnv` is merged last, so a test can override any setting.
 */
export async function startServer(backend, { extraEnv = {}, env = process.env } = {}) {
  const bin = serverBinary(env);
  try {
    accessSync(bin, fsConstants.X_OK);
  } catch {
    throw new Error(
      `sealpost binary not found or not executable at ${bin}; build it (cargo build) or set SEALPOST_BIN`,
    );
  }

  const dataDir = await mkdtemp(join(tmpdir(), `sealpost-${backend}-`));
  const childEnv = { ...env };
  for (const name of SCRUBBED_VARS) {
    delete childEnv[name];
  }
  Object.assign(
    childEnv,
    {
      SEALPOST_LISTEN: '127.0.0.1:0',
      SEALPOST_METRICS_LISTEN: '127.0.0.1:0',
      SEALPOST_DATA_DIR: dataDir,
      SEALPOST_LIMIT_REGISTRATION_PER_IP: '10000/1m',
      SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER: '100000/1m',
      SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER_TARGET: '100000/1m',
      // sealpost's own code at debug: a line per request, so the "never logs" checks look at real output.
      SEALPOST_LOG: 'sealpost=debug,info',
      NO_COLOR: '1',
    },
    backendEnv(backend, env),
    extraEnv,
  );

  const child = spawn(bin, ['serve'], {
    env: childEnv,
    cwd: dataDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);

  const chunks = [];
  const output = () => chunks.join('');
  let exitInfo = null;
  // 'close' rather than 'exit': it fires once stdout and stderr are drained,
  // so output() is complete when a caller sees the process as gone. A spawn
  // failure ('error') may never produce either event, so it counts as exit too.
  const exitedPromise = new Promise((resolveExit) => {
    const done = (code, signal) => {
      if (exitInfo === null) {
        exitInfo = { code, signal };
        live.delete(child);
        resolveExit(exitInfo);
      }
    };
    child.once('close', done);
    child.once('error', () => done(null, null));
  });

  let baseUrl;
  try {
    baseUrl = await new Promise((resolveUrl, rejectUrl) => {
      let settled = false;
      let timer = null;
      const settle = (fn, value) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          fn(value);
        }
      };
      const onData = (chunk) => {
        chunks.push(chunk);
        if (settled) {
          return;
        }
        // Only complete lines: a pipe may split "127.0.0.1:45678" mid-port.
        const text = output();
        const url = findListeningUrl(text.slice(0, text.lastIndexOf('\n') + 1));
        if (url !== null) {
          settle(resolveUrl, url);
        }
      };
      child.stdout.setEncoding('utf8');
      child.stderr.setEncoding('utf8');
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('error', (err) => {
        settle(rejectUrl, new Error(`could not start ${bin}: ${err.message}\n--- output ---\n${tail(output())}`));
      });
      exitedPromise.then(({ code, signal }) => {
        settle(
          rejectUrl,
          new Error(
            `sealpost (${backend}) exited before listening (code ${code}, signal ${signal})\n--- output ---\n${tail(output())}`,
          ),
        );
      });
      timer = setTimeout(() => {
        settle(
          rejectUrl,
          new Error(
            `sealpost (${backend}) did not log "listening on http://127.0.0.1:PORT" within ` +
              `${START_TIMEOUT_MS / 1000} s\n--- output ---\n${tail(output())}`,
          ),
        );
      }, START_TIMEOUT_MS);
    });
  } catch (err) {
    await terminate(child, exitedPromise, () => exitInfo);
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }

  let stopping = null;
  const server = {
    backend,
    baseUrl,
    dataDir,
    env: childEnv,
    output,
    get exited() {
      return exitInfo !== null;
    },
    /** SIGTERM, wait for exit (SIGKILL after 15 s, then reject), remove the data dir. Idempotent. */
    stop() {
      stopping ??= (async () => {
        const result = await terminate(child, exitedPromise, () => exitInfo);
        if (!process.env.SEALPOST_TEST_KEEP_DATA) {
          await rm(dataDir, { recursive: true, force: true });
        }
        if (result.killed) {
          throw new Error(
            `sealpost (${backend}) did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM; killed\n` +
              `--- output ---\n${tail(output())}`,
          );
        }
        return { code: result.code, signal: result.signal };
      })();
      return stopping;
    },
  };
  return server;
}

/** Sends SIGTERM, waits for exit, escalates to SIGKILL after the timeout. */
async function terminate(child, exitedPromise, currentExit) {
  if (currentExit() !== null) {
    return { ...currentExit(), killed: false };
  }
  child.kill('SIGTERM');
  let timer;
  const timedOut = new Promise((r) => {
    timer = setTimeout(() => r('timeout'), STOP_TIMEOUT_MS);
  });
  const first = await Promise.race([exitedPromise, timedOut]);
  clearTimeout(timer);
  if (first !== 'timeout') {
    return { ...first, killed: false };
  }
  child.kill('SIGKILL');
  const after = await exitedPromise;
  return { ...after, killed: true };
}

/**
 * For a describe() block: starts a server for `backend` before its tests and
 * stops it after them. Returns a function that gives the running server, or
 * throws the start error, so that a server that cannot start makes every test
 * in the block fail (with the reason) rather than be cancelled or skipped.
 */
export function useServer(backend, options = {}) {
  let server = null;
  let startError = null;
  before(async () => {
    try {
      server = await startServer(backend, options);
    } catch (err) {
      startError = err;
    }
  });
  after(async () => {
    await server?.stop();
  });
  return () => {
    if (server !== null) {
      return server;
    }
    throw startError ?? new Error(`sealpost (${backend}) was not started`);
  };
}
