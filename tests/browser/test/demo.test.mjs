// The /demo/ page in headless Chromium: an owner and a caller, in two browser contexts with fake camera and
// microphone, make a QR-initiated call through a real sealpost and a real coturn.
//
// - The caller reaches the owner through the link in the owner's QR code, decoded from a screenshot.
// - Both reach ICE "connected" and their getStats inbound counters grow; hanging up ends both sides.
// - Again with iceTransportPolicy "relay": media only through coturn, with sealpost's TURN credentials.
// - A revoked link, a missing camera and a rate limit show their errors in words.
//
// Screenshots go to SEALPOST_DEMO_ARTIFACTS (default <repo>/target/demo-artifacts).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import jsQR from 'jsqr';
import { chromium } from 'playwright-core';
import { PNG } from 'pngjs';

import { startServer } from '../../client/lib/server.mjs';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const ARTIFACTS = process.env.SEALPOST_DEMO_ARTIFACTS || join(REPO, 'target/demo-artifacts');
const CHROMIUM = process.env.SEALPOST_CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 30_000;

/** coturn with the repository's configuration, on a free loopback port, loopback peers allowed. */
async function startCoturn(secret) {
  const socket = dgram.createSocket('udp4');
  await new Promise((r) => socket.bind(0, '127.0.0.1', r));
  const port = socket.address().port;
  socket.close();
  const dir = mkdtempSync(join(tmpdir(), 'sealpost-demo-turn-'));
  const child = spawn(
    'turnserver',
    [
      '-c', join(REPO, 'coturn/turnserver.conf'),
      `--static-auth-secret=${secret}`,
      '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${port}`,
      // Both browsers relay to each other on loopback, which the shipped file denies.
      '--allow-loopback-peers', '--allowed-peer-ip=127.0.0.1',
      `--userdb=${join(dir, 'turndb')}`, `--pidfile=${join(dir, 'turnserver.pid')}`,
    ],
    { stdio: 'ignore' },
  );
  const deadline = Date.now() + 10_000;
  while (!(await stunAnswers(port))) {
    assert.ok(Date.now() < deadline, `turnserver did not start on port ${port}`);
  }
  return {
    port,
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether a STUN binding request to the port gets a success answer within 200 ms. */
function stunAnswers(port) {
  return new Promise((resolveAnswer) => {
    const socket = dgram.createSocket('udp4');
    const done = (ok) => {
      clearTimeout(timer);
      socket.close();
      resolveAnswer(ok);
    };
    const timer = setTimeout(() => done(false), 200);
    socket.on('message', (m) => done(m.length >= 20 && m[0] === 0x01 && m[1] === 0x01));
    socket.on('error', () => done(false));
    const request = Buffer.concat([Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]), randomBytes(12)]);
    socket.send(request, port, '127.0.0.1');
  });
}

function stateIs(page, state, timeout = STEP_MS) {
  return page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout });
}

/** A page that fails the test on any script error or Content-Security-Policy violation. */
async function openPage(browser, url, problems) {
  const context = await browser.newContext({ viewport: { width: 520, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (/Content.Security.Policy|Refused to/i.test(msg.text())) problems.push(`console: ${msg.text()}`);
  });
  await page.goto(url);
  return page;
}

/** The text of the QR code in a screenshot of the page. */
async function qrInScreenshot(page, file) {
  const png = PNG.sync.read(await page.screenshot({ path: file }));
  const found = jsQR(new Uint8ClampedArray(png.data), png.width, png.height);
  assert.ok(found, 'no QR code found in the owner screenshot');
  return found.data;
}

function stats(page) {
  return page.evaluate(() => window.sealpostDemo.stats());
}

function isConnected(page) {
  return page.waitForFunction(() => ['connected', 'completed'].includes(document.body.dataset.ice), null, {
    timeout: STEP_MS,
  });
}

describe('the /demo/ page in headless Chromium', () => {
  let coturn;
  let server;
  let browser;
  let secretDir;
  const problems = [];

  before(async () => {
    assert.ok(
      existsSync(CHROMIUM),
      `Chromium is not installed at ${CHROMIUM}; install with: apt-get update && apt-get install -y chromium`,
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    const secret = randomBytes(24).toString('hex');
    secretDir = mkdtempSync(join(tmpdir(), 'sealpost-demo-secret-'));
    writeFileSync(join(secretDir, 'turn_secret'), secret, { mode: 0o600 });
    coturn = await startCoturn(secret);
    server = await startServer('embedded', {
      extraEnv: {
        SEALPOST_TURN_SECRET_FILE: join(secretDir, 'turn_secret'),
        SEALPOST_TURN_URLS: `turn:127.0.0.1:${coturn.port}?transport=udp`,
        // Enough contact resolutions for every test, refilled too slowly (one in two minutes) for the
        // rate-limit test to race a refill.
        SEALPOST_LIMIT_CONTACT_RESOLVE_PER_IP: '30/1h',
      },
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        // Real host candidates rather than mDNS names, so two contexts on one machine find each other.
        '--disable-features=WebRtcHideLocalIpsWithMdns',
      ],
    });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    coturn?.stop();
    if (secretDir) rmSync(secretDir, { recursive: true, force: true });
  });

  /** A whole call: QR, ring, accept, media both ways, hang-up. Returns what the pages reported. */
  async function call(query, name) {
    const owner = await openPage(browser, `${server.baseUrl}/demo/${query}`, problems);
    await stateIs(owner, 'waiting');
    const link = await owner.textContent('#link');
    assert.equal(await owner.getAttribute('#link', 'href'), link);
    const decoded = await qrInScreenshot(owner, join(ARTIFACTS, `${name}-owner-waiting.png`));
    assert.equal(decoded, link, 'the QR code holds the link');
    assert.match(link, new RegExp(`^${server.baseUrl}/demo/${query.replace('?', '\\?')}#t=[A-Za-z0-9_-]{43}$`));

    const caller = await openPage(browser, decoded, problems);
    await stateIs(caller, 'ready');
    await caller.click('#call');
    await stateIs(caller, 'ringing');
    await stateIs(owner, 'incoming');
    await owner.click('#accept');
    await Promise.all([isConnected(owner), isConnected(caller)]);
    await Promise.all([stateIs(owner, 'in-call'), stateIs(caller, 'in-call')]);

    // Media flows both ways: inbound counters grow over two seconds on each side.
    await caller.waitForTimeout(1000);
    const first = { owner: await stats(owner), caller: await stats(caller) };
    await caller.waitForTimeout(2000);
    const second = { owner: await stats(owner), caller: await stats(caller) };
    for (const side of ['owner', 'caller']) {
      assert.ok(first[side].inboundPackets > 0, `${side} received no packets: ${JSON.stringify(first[side])}`);
      assert.ok(
        second[side].inboundPackets > first[side].inboundPackets,
        `${side}'s inbound packets did not grow: ${first[side].inboundPackets} -> ${second[side].inboundPackets}`,
      );
    }
    const ownerShot = await owner.screenshot({ path: join(ARTIFACTS, `${name}-owner.png`) });
    const callerShot = await caller.screenshot({ path: join(ARTIFACTS, `${name}-caller.png`) });
    await sideBySide(ownerShot, callerShot, join(ARTIFACTS, `${name}-both.png`));

    await caller.click('#hangup');
    await Promise.all([stateIs(caller, 'ended'), stateIs(owner, 'ended')]);
    assert.match(await owner.textContent('#status'), /hung up/);
    // Neither the contact token nor an account of the call reached the server's logs.
    const token = new URL(link).hash.slice('#t='.length);
    const accounts = await Promise.all([owner, caller].map((p) => p.evaluate(() => window.sealpostDemo.aci())));
    for (const secret of [token, ...accounts]) {
      assert.ok(secret && !server.output().includes(secret), `the server's log holds ${secret}`);
    }
    await owner.context().close();
    await caller.context().close();
    assert.deepEqual(problems, []);
    return { first, second };
  }

  /** One picture of both pages, owner left and caller right, for the README. */
  async function sideBySide(left, right, file) {
    const page = await browser.newPage({ viewport: { width: 1060, height: 900 } });
    const img = (png) => `<img src="data:image/png;base64,${png.toString('base64')}" style="margin:5px">`;
    await page.setContent(`<body style="margin:0;background:#888;display:flex">${img(left)}${img(right)}</body>`);
    await page.screenshot({ path: file });
    await page.close();
  }

  test('a call through the QR link: both sides connect, media flows both ways, hang-up ends both', async () => {
    const started = Date.now();
    const { first, second } = await call('', 'call');
    console.log(`direct call in ${Date.now() - started} ms; inbound packets owner ${first.owner.inboundPackets} -> ` +
      `${second.owner.inboundPackets}, caller ${first.caller.inboundPackets} -> ${second.caller.inboundPackets}; ` +
      `candidates ${second.owner.localCandidateType}/${second.caller.localCandidateType}`);
  });

  test('relay only: media goes through coturn with the TURN credentials from /v1/calling/relays', async () => {
    const started = Date.now();
    const { first, second } = await call('?ice=relay', 'relay');
    for (const side of ['owner', 'caller']) {
      assert.equal(second[side].localCandidateType, 'relay', `${side} did not use a relay candidate`);
      assert.equal(second[side].remoteCandidateType, 'relay', `${side}'s peer did not use a relay candidate`);
    }
    console.log(`relay-only call in ${Date.now() - started} ms; inbound packets owner ${first.owner.inboundPackets} -> ` +
      `${second.owner.inboundPackets}, caller ${first.caller.inboundPackets} -> ${second.caller.inboundPackets}`);
  });

  test('a revoked link says so in words', async () => {
    const owner = await openPage(browser, `${server.baseUrl}/demo/`, problems);
    await stateIs(owner, 'waiting');
    const link = await owner.textContent('#link');
    await owner.click('#revoke');
    await owner.waitForSelector('#revoked', { state: 'visible' });
    const caller = await openPage(browser, link, problems);
    await stateIs(caller, 'error');
    assert.match(await caller.textContent('#error'), /revoked/);
    await caller.screenshot({ path: join(ARTIFACTS, 'revoked-caller.png') });
    await owner.context().close();
    await caller.context().close();
    assert.deepEqual(problems, []);
  });

  // Last: it spends this address's contact resolutions.
  test('no camera and a rate limit are said in words', async () => {
    const owner = await openPage(browser, `${server.baseUrl}/demo/`, problems);
    await stateIs(owner, 'waiting');
    const link = await owner.textContent('#link');

    // A caller whose device has no camera: getUserMedia fails as it does there.
    const cameraless = await browser.newContext();
    await cameraless.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('no device', 'NotFoundError'));
    });
    const caller = await cameraless.newPage();
    await caller.goto(link);
    await stateIs(caller, 'ready');
    await caller.click('#call');
    await stateIs(caller, 'ended');
    assert.match(await caller.textContent('#status'), /No camera or microphone was found/);
    await cameraless.close();

    // Resolutions from this address until the server refuses them.
    const token = new URL(link).hash.slice('#t='.length);
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`${server.baseUrl}/v1/contact/${token}`);
      await res.arrayBuffer();
      if (res.status === 429) break;
      assert.equal(res.status, 200);
    }
    const limited = await openPage(browser, link, problems);
    await stateIs(limited, 'error');
    assert.match(await limited.textContent('#error'), /Too many attempts from this address: try again in \d+ seconds?\./);
    await limited.screenshot({ path: join(ARTIFACTS, 'rate-limited-caller.png') });
    await limited.context().close();
    await owner.context().close();
    assert.deepEqual(problems, []);
  });
});
