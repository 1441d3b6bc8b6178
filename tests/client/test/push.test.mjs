// Web Push wakeups with a real client: Bob's device registers a browser-style
// push subscription (a P-256 key pair and auth secret made with WebCrypto, as
// PushManager.subscribe makes them) for a push endpoint this test runs, and
// goes offline. Alice sends him a message encrypted with the official
// libsignal client; Bob's endpoint receives one empty wakeup, signed with the
// server's VAPID key (checked with WebCrypto against GET /v1/push/vapid); Bob
// connects, and gets and decrypts his message.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { randomBytes, webcrypto } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import {
  PreKeySignalMessage,
  ProtocolAddress,
  processPreKeyBundle,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';

import { expectStatus, fetchPreKeys, registerAndLogin, request, uploadKeys } from '../lib/api.mjs';
import { bundleFromJson, generatePreKeys, newDeviceIdentity, registrationBody, uploadBody } from '../lib/keys.mjs';
import { envelopeTypeFor, outgoingMessage, pollUntil, sendMessages } from '../lib/messages.mjs';
import { bytesToUuid } from '../lib/proto.mjs';
import { backends, useServer } from '../lib/server.mjs';
import { ServiceSocket } from '../lib/ws.mjs';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CONTACT = 'mailto:ops@sealpost.test';

function base64url(bytes) {
  return Buffer.from(bytes).toString('base64url');
}

/** A push endpoint: records every request, answers 201 like a push service. */
function startPushEndpoint() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ method: req.method, path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(201).end();
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const origin = `http://127.0.0.1:${server.address().port}`;
      resolve({ origin, received, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

/** Verifies a VAPID `Authorization` header (RFC 8292) with WebCrypto; returns the token's claims. */
async function verifyVapid(authorization, publicKey) {
  const match = /^vapid t=([^,]+), k=(.+)$/.exec(authorization ?? '');
  assert.ok(match, `a VAPID Authorization header: ${authorization}`);
  const [, token, k] = match;
  assert.equal(k, publicKey, 'the header names the key GET /v1/push/vapid publishes');
  const key = await webcrypto.subtle.importKey(
    'raw',
    Buffer.from(publicKey, 'base64url'),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['verify'],
  );
  const [header, payload, signature] = token.split('.');
  const valid = await webcrypto.subtle.verify(
    { name: 'ECDSA', hash: 'SHA-256' },
    key,
    Buffer.from(signature, 'base64url'),
    encoder.encode(`${header}.${payload}`),
  );
  assert.ok(valid, 'the VAPID token is signed by the server key');
  assert.equal(JSON.parse(Buffer.from(header, 'base64url')).alg, 'ES256');
  return JSON.parse(Buffer.from(payload, 'base64url'));
}

for (const backend of backends) {
  describe(`push wakeups with a real client (${backend})`, () => {
    const extraEnv = { SEALPOST_PUSH_CONTACT: CONTACT };
    let endpoint;
    before(async () => {
      endpoint = await startPushEndpoint();
      // Plain http on loopback is refused by default; the operator allows this origin, as for a LAN ntfy.
      extraEnv.SEALPOST_PUSH_ALLOWED_ORIGINS = endpoint.origin;
    });
    after(async () => {
      await endpoint?.close();
    });
    const server = useServer(backend, { extraEnv });

    it('wakes an offline device once, with nothing in the push, and the device then gets its message', async () => {
      const { baseUrl } = server();
      const alice = newDeviceIdentity();
      const bob = newDeviceIdentity();
      const small = { preKeyCount: 2, pqPreKeyCount: 2, firstPqPreKeyId: 101, lastResortId: 5000, signedPreKeyId: 7 };
      const bobKeys = await generatePreKeys(bob, small);
      const aliceKeys = await generatePreKeys(alice, small);
      const bobAccount = await registerAndLogin(baseUrl, registrationBody(bob), bob.deviceSecret);
      const aliceAccount = await registerAndLogin(baseUrl, registrationBody(alice), alice.deviceSecret);
      expectStatus(await uploadKeys(baseUrl, bobAccount.token, uploadBody(bobKeys)), 'success', 'PUT /v1/keys');
      expectStatus(await uploadKeys(baseUrl, aliceAccount.token, uploadBody(aliceKeys)), 'success', 'PUT /v1/keys');

      // Bob's browser subscribes: the application server key is the server's VAPID key.
      const vapid = expectStatus(await request(baseUrl, 'GET', '/v1/push/vapid'), 200, 'GET /v1/push/vapid');
      assert.equal(Buffer.from(vapid.publicKey, 'base64url').length, 65, 'an uncompressed P-256 point');
      const pair = await webcrypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
      const p256dh = new Uint8Array(await webcrypto.subtle.exportKey('raw', pair.publicKey));
      const auth = new Uint8Array(randomBytes(16));
      const subscriptionPath = `/wpush/${base64url(randomBytes(18))}`;
      const subscription = {
        endpoint: `${endpoint.origin}${subscriptionPath}`,
        expirationTime: null,
        keys: { p256dh: base64url(p256dh), auth: base64url(auth) },
      };
      const put = await request(baseUrl, 'PUT', '/v1/devices/me/push', { json: subscription, auth: { token: bobAccount.token } });
      expectStatus(put, 204, 'PUT /v1/devices/me/push');

      // Bob is offline. Alice starts a session from his bundle and sends three messages.
      const bobAddress = ProtocolAddress.new(bobAccount.aci, 1);
      const aliceAddress = ProtocolAddress.new(aliceAccount.aci, 1);
      const fetched = expectStatus(
        await fetchPreKeys(baseUrl, bobAccount.aci, 1, { token: aliceAccount.token }),
        200,
        'GET /v1/keys/{bob}/1',
      );
      await processPreKeyBundle(
        bundleFromJson(fetched.identityKey, fetched.devices[0]),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      const texts = ['wake up, Bob', 'are you there?', 'call me'];
      const contents = [];
      for (const text of texts) {
        const ciphertext = await signalEncrypt(encoder.encode(text), bobAddress, aliceAddress, alice.stores.session, alice.stores.identity);
        const content = new Uint8Array(ciphertext.serialize());
        contents.push(Buffer.from(content).toString('base64'));
        const res = await sendMessages(
          baseUrl,
          bobAccount.aci,
          {
            messages: [outgoingMessage({ type: envelopeTypeFor(ciphertext), destinationRegistrationId: bob.registrationId, content })],
            timestamp: Date.now(),
            ttlSeconds: 600,
            urgent: false,
          },
          { token: aliceAccount.token },
        );
        expectStatus(res, 200, 'PUT /v1/messages/{bob}');
      }

      const wakeups = await pollUntil(
        () => endpoint.received.filter((r) => r.path === subscriptionPath),
        (list) => list.length >= 1,
        { timeoutMs: 10_000 },
      );
      await new Promise((r) => setTimeout(r, 800));
      const all = endpoint.received.filter((r) => r.path === subscriptionPath);
      assert.equal(all.length, 1, 'three messages to an offline device make one wakeup');
      const [wakeup] = wakeups;
      assert.equal(wakeup.method, 'POST');
      assert.equal(wakeup.body.length, 0, 'the push carries no payload');
      assert.equal(wakeup.headers['content-length'], '0');
      assert.equal(wakeup.headers.urgency, 'normal');
      const ttl = Number(wakeup.headers.ttl);
      assert.ok(ttl > 590 && ttl <= 600, `TTL matches the envelopes': ${ttl}`);
      const claims = await verifyVapid(wakeup.headers.authorization, vapid.publicKey);
      assert.equal(claims.aud, endpoint.origin, 'aud is the push service origin');
      assert.equal(claims.sub, CONTACT);
      const now = Math.floor(Date.now() / 1000);
      assert.ok(claims.exp > now && claims.exp <= now + 24 * 3600, `exp within 24 h: ${claims.exp}`);
      const everything = JSON.stringify(wakeup.headers) + JSON.stringify(claims);
      for (const secret of [bobAccount.aci, aliceAccount.aci, ...contents, base64url(p256dh), base64url(auth)]) {
        assert.ok(!everything.includes(secret), 'the push names no account, content or key');
      }

      // Woken, Bob connects and gets his messages, which the library decrypts.
      const socket = await ServiceSocket.connect(baseUrl, bobAccount.token, { label: 'Bob' });
      try {
        const received = [];
        for (let i = 0; i < texts.length; i += 1) {
          const delivery = await socket.nextEnvelope();
          const { envelope } = delivery;
          const plaintext = await signalDecryptPreKey(
            PreKeySignalMessage.deserialize(envelope.content),
            ProtocolAddress.new(bytesToUuid(envelope.sourceServiceId), envelope.sourceDevice),
            bobAddress,
            bob.stores.session,
            bob.stores.identity,
            bob.stores.preKey,
            bob.stores.signedPreKey,
            bob.stores.kyberPreKey,
          );
          received.push(decoder.decode(plaintext));
          await socket.respond(delivery.request.id, 200);
        }
        assert.deepEqual(received, texts);
      } finally {
        await socket.close();
      }

      const output = server().output();
      for (const secret of [bobAccount.aci, subscriptionPath, base64url(p256dh)]) {
        assert.ok(!output.includes(secret), 'the server logs neither the account nor its subscription');
      }
    });
  });
}
