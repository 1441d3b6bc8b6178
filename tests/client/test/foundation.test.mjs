// Foundation: an account made from keys of the official client library can
// register, trade its device secret for a token, and use that token; wrong
// credentials are refused with a JSON error; credentials never reach the logs.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { b64, createAccount, issueToken, listDevices, request } from '../lib/api.mjs';
import { newDeviceIdentity, registrationBody } from '../lib/keys.mjs';
import { backends, useServer } from '../lib/server.mjs';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const JWT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const DAY_MS = 86_400_000;

for (const backend of backends) {
  describe(`foundation (${backend})`, () => {
    const server = useServer(backend);
    const startedAt = Date.now();
    const identity = newDeviceIdentity();
    let aci;
    let token;

    it('makes keys the way a client does (IdentityKeyPair.generate)', () => {
      const publicKey = identity.identityKeyPair.publicKey.serialize();
      assert.equal(publicKey.length, 33);
      assert.equal(publicKey[0], 0x05);
      assert.ok(identity.registrationId >= 1 && identity.registrationId <= 16380);
      assert.equal(identity.deviceSecret.length, 32);
    });

    it('registers an account: 201 with an ACI and device 1', async () => {
      const { baseUrl } = server();
      const res = await createAccount(baseUrl, registrationBody(identity));
      assert.equal(res.status, 201, res.text);
      assert.match(res.body.aci, UUID_RE);
      assert.equal(res.body.deviceId, 1);
      aci = res.body.aci;
    });

    it('issues a bearer token for the device secret', async () => {
      const { baseUrl } = server();
      assert.ok(aci, 'registration must have succeeded');
      const res = await issueToken(baseUrl, aci, 1, identity.deviceSecret);
      assert.equal(res.status, 200, res.text);
      assert.equal(typeof res.body.token, 'string');
      assert.match(res.body.token, JWT_RE);
      assert.ok(Number.isInteger(res.body.expiresIn) && res.body.expiresIn > 0, `expiresIn ${res.body.expiresIn}`);
      token = res.body.token;
    });

    it('lists exactly one device, id 1, with created and lastSeen (day-rounded)', async () => {
      const { baseUrl } = server();
      assert.ok(token, 'token must have been issued');
      const res = await listDevices(baseUrl, token);
      assert.equal(res.status, 200, res.text);
      assert.ok(Array.isArray(res.body.devices), res.text);
      assert.equal(res.body.devices.length, 1, res.text);
      const [device] = res.body.devices;
      assert.equal(device.id, 1);

      const now = Date.now();
      assert.ok(Number.isInteger(device.created), `created ${device.created}`);
      assert.ok(
        device.created >= startedAt - 60_000 && device.created <= now + 60_000,
        `created ${device.created} is not around now (${startedAt}..${now})`,
      );
      assert.ok(Number.isInteger(device.lastSeen), `lastSeen ${device.lastSeen}`);
      assert.equal(device.lastSeen % DAY_MS, 0, `lastSeen ${device.lastSeen} is not rounded to a day`);
      const days = new Set([Math.floor(startedAt / DAY_MS) * DAY_MS, Math.floor(now / DAY_MS) * DAY_MS]);
      assert.ok(days.has(device.lastSeen), `lastSeen ${device.lastSeen} is not today (${[...days]})`);
    });

    it('refuses a wrong device secret with 401 and a JSON error code', async () => {
      const { baseUrl } = server();
      assert.ok(aci, 'registration must have succeeded');
      const wrong = new Uint8Array(identity.deviceSecret);
      wrong[0] ^= 0x01;
      const res = await issueToken(baseUrl, aci, 1, wrong);
      assert.equal(res.status, 401, res.text);
      assert.ok(res.body !== null && typeof res.body === 'object', `body is not JSON: ${res.text}`);
      assert.equal(typeof res.body.code, 'string', res.text);
      assert.ok(!('token' in res.body), res.text);
    });

    it('refuses /v1/devices without a valid token', async () => {
      const { baseUrl } = server();
      const none = await request(baseUrl, 'GET', '/v1/devices');
      assert.equal(none.status, 401, none.text);
      assert.equal(typeof none.body?.code, 'string', none.text);

      assert.ok(token, 'token must have been issued');
      // Same token with its signature changed.
      const parts = token.split('.');
      const sig = parts[2];
      parts[2] = (sig[0] === 'A' ? 'B' : 'A') + sig.slice(1);
      const forged = await listDevices(baseUrl, parts.join('.'));
      assert.equal(forged.status, 401, forged.text);
    });

    it('never writes the ACI, the token or the device secret to its output', async () => {
      const running = server();
      assert.ok(aci && token, 'earlier steps must have succeeded');
      // Stop first, so everything the server buffered has been flushed.
      await running.stop();
      const out = running.output();
      assert.ok(out.length > 0, 'server printed nothing at all');
      assert.match(out, /request .*route=/, 'the server logged its requests at debug level');
      assert.ok(!out.includes(aci), 'server output contains the ACI');
      assert.ok(!out.includes(aci.replaceAll('-', '')), 'server output contains the ACI (hex)');
      assert.ok(!out.includes(token), 'server output contains the token');
      assert.ok(!out.includes(token.split('.')[2]), 'server output contains the token signature');
      assert.ok(!out.includes(b64(identity.deviceSecret)), 'server output contains the device secret');
    });
  });
}
