// Message relay acceptance: Alice and Bob, each a device of the official
// client library, talk through the server only. Messages go up with
// PUT /v1/messages and come down as Envelope protobufs on the authenticated
// WebSocket (or with GET /v1/messages for a device without one). This proves
// that the server relays PreKey, Signal and sealed-sender messages byte for
// byte with the right envelope metadata, keeps a message queued until it is
// acknowledged, hands out sender certificates that the library accepts, hides
// the sender of a sealed-sender message, and keeps ACIs, message contents
// and message guids out of its logs.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import {
  CiphertextMessageType,
  PreKeySignalMessage,
  PrivateKey,
  ProtocolAddress,
  PublicKey,
  SenderCertificate,
  SignalMessage,
  processPreKeyBundle,
  sealedSenderDecryptMessage,
  sealedSenderEncryptMessage,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';

import {
  b64,
  expectStatus,
  fetchPreKeys,
  fromB64,
  registerAndLogin,
  setAttributes,
  uploadKeys,
} from '../lib/api.mjs';
import {
  bundleFromJson,
  generatePreKeys,
  newDeviceIdentity,
  registrationBody,
  uploadBody,
} from '../lib/keys.mjs';
import {
  deleteMessage,
  deliveryCertificate,
  envelopeTypeFor,
  fetchMessages,
  outgoingMessage,
  pollUntil,
  sendMessages,
  trustRoot,
} from '../lib/messages.mjs';
import { EnvelopeType, bytesToUuid, uuidToBytes } from '../lib/proto.mjs';
import { backends, useServer } from '../lib/server.mjs';
import { ServiceSocket, bigRequestId } from '../lib/ws.mjs';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Server and test run on one machine: server-made times must fall within
// this margin of the test's own clock around the call that caused them.
const CLOCK_MARGIN_MS = 60_000;
const SOCKET_CLOSE_TIMEOUT_MS = 10_000;

function randomKey16() {
  return new Uint8Array(randomBytes(16));
}

/** A 16-byte key guaranteed to differ from `key`. */
function otherKey16(key) {
  let k = randomKey16();
  while (Buffer.from(k).equals(Buffer.from(key))) {
    k = randomKey16();
  }
  return k;
}

/** A registration id (1..=16380) different from `id`. */
function otherRegistrationId(id) {
  return (id % 16380) + 1;
}

function assertNear(actualMs, lowMs, highMs, what) {
  assert.ok(
    actualMs >= lowMs - CLOCK_MARGIN_MS && actualMs <= highMs + CLOCK_MARGIN_MS,
    `${what} ${actualMs} is not near the test's clock (${lowMs}..${highMs})`,
  );
}

/**
 * Checks what every pushed envelope must carry. `expected`:
 * { type, source: { aci, deviceId } | null (sealed sender), destinationAci,
 *   clientTimestamp, content, urgent, sentAfter, sentBefore }.
 * Returns the server guid as a UUID string.
 */
function assertDelivery({ request, envelope, timestampHeader }, expected) {
  assert.equal(request.verb, 'PUT');
  assert.equal(request.path, '/api/v1/message');
  assert.equal(typeof request.id, 'bigint', 'the delivery request has an id');

  assert.ok(timestampHeader !== undefined, `no X-Signal-Timestamp header in ${JSON.stringify(request.headers)}`);
  assert.match(timestampHeader, /^\d+$/, 'X-Signal-Timestamp is milliseconds as a decimal integer');
  assertNear(Number(timestampHeader), expected.sentAfter, Date.now(), 'X-Signal-Timestamp');

  assert.equal(envelope.type, expected.type, 'envelope type');
  if (expected.source === null) {
    assert.equal(envelope.sourceServiceId, undefined, 'a sealed-sender envelope must not name its sender');
    assert.equal(envelope.sourceDevice, undefined, 'a sealed-sender envelope must not carry a source device');
  } else {
    assert.ok(envelope.sourceServiceId instanceof Uint8Array, 'sourceServiceId is present');
    assert.equal(bytesToUuid(envelope.sourceServiceId), expected.source.aci, 'sourceServiceId is the sender ACI');
    assert.equal(envelope.sourceDevice, expected.source.deviceId, 'sourceDevice');
  }
  assert.ok(envelope.destinationServiceId instanceof Uint8Array, 'destinationServiceId is present');
  assert.deepEqual(envelope.destinationServiceId, uuidToBytes(expected.destinationAci), 'destinationServiceId');
  assert.ok(envelope.serverGuid instanceof Uint8Array, 'serverGuid is present');
  assert.equal(envelope.serverGuid.length, 16, 'serverGuid is 16 bytes');
  assert.equal(envelope.clientTimestamp, BigInt(expected.clientTimestamp), 'clientTimestamp is the sender timestamp');
  assert.equal(typeof envelope.serverTimestamp, 'bigint', 'serverTimestamp is present');
  assertNear(Number(envelope.serverTimestamp), expected.sentAfter, expected.sentBefore, 'serverTimestamp');
  assert.equal(envelope.urgent ?? true, expected.urgent, 'urgent');
  assert.deepEqual(envelope.content, expected.content, 'content is relayed byte for byte');
  return bytesToUuid(envelope.serverGuid);
}

for (const backend of backends) {
  describe(`message relay (${backend})`, () => {
    const server = useServer(backend);
    const alice = newDeviceIdentity();
    const bob = newDeviceIdentity();
    const bobAccessKey = randomKey16();
    let aliceKeys;
    let bobKeys;
    let aliceAccount;
    let bobAccount;
    let aliceAddress;
    let bobAddress;
    let aliceSocket;
    let bobSocket;
    let root; // trust root PublicKey from the server

    // Everything the log check looks for.
    const sentContents = []; // base64 of every content given to the server
    const serverGuids = []; // every guid seen, as UUID strings

    before(async () => {
      const small = { preKeyCount: 5, pqPreKeyCount: 5, firstPqPreKeyId: 101, lastResortId: 5000, signedPreKeyId: 7 };
      aliceKeys = await generatePreKeys(alice, small);
      bobKeys = await generatePreKeys(bob, small);
    });

    after(() => {
      // Normally closed by the last test; this only cleans up after a failure.
      aliceSocket?.terminate();
      bobSocket?.terminate();
    });

    /** PUT /v1/messages with a record of the content for the log check. */
    async function send(destinationAci, messages, auth, extra = {}) {
      for (const m of messages) {
        sentContents.push(m.content);
      }
      return sendMessages(server().baseUrl, destinationAci, { messages, ...extra }, auth);
    }

    it('Alice and Bob register and upload keys; Bob sets an unidentified access key', async () => {
      const { baseUrl } = server();

      bobAccount = await registerAndLogin(baseUrl, registrationBody(bob), bob.deviceSecret);
      bobAddress = ProtocolAddress.new(bobAccount.aci, bobAccount.deviceId);
      expectStatus(await uploadKeys(baseUrl, bobAccount.token, uploadBody(bobKeys)), 'success', 'PUT /v1/keys (Bob)');
      expectStatus(
        await setAttributes(baseUrl, bobAccount.token, {
          unidentifiedAccessKey: b64(bobAccessKey),
          unrestrictedUnidentifiedAccess: false,
        }),
        'success',
        'PUT /v1/accounts/me/attributes (Bob)',
      );

      aliceAccount = await registerAndLogin(baseUrl, registrationBody(alice), alice.deviceSecret);
      aliceAddress = ProtocolAddress.new(aliceAccount.aci, aliceAccount.deviceId);
      expectStatus(
        await uploadKeys(baseUrl, aliceAccount.token, uploadBody(aliceKeys)),
        'success',
        'PUT /v1/keys (Alice)',
      );
    });

    it('both connect a socket, get the queue-empty marker at once, and get keepalives answered', async () => {
      const { baseUrl } = server();
      assert.ok(bobAccount && aliceAccount, 'both accounts must exist');

      bobSocket = await ServiceSocket.connect(baseUrl, bobAccount.token, { label: 'Bob' });
      // Nothing is queued for Bob: the queue-empty marker comes first.
      assert.deepEqual(await bobSocket.drainUntilQueueEmpty(), [], 'a new account has no queued envelopes');

      // Keepalive: answered 200 with the very id we sent, even one above 2^53.
      const keepaliveId = bigRequestId();
      const pong = await bobSocket.request('GET', '/v1/keepalive', { id: keepaliveId });
      assert.equal(pong.id, keepaliveId, 'the keepalive response carries the request id, all 64 bits of it');
      assert.equal(pong.status, 200, 'keepalive status');

      // Alice authenticates with ?token= instead of the header.
      aliceSocket = await ServiceSocket.connect(baseUrl, aliceAccount.token, { tokenInQuery: true, label: 'Alice' });
      assert.deepEqual(await aliceSocket.drainUntilQueueEmpty(), []);
      const alicePong = await aliceSocket.request('GET', '/v1/keepalive');
      assert.equal(alicePong.status, 200);
    });

    it('refuses a socket without a valid token', async () => {
      const { baseUrl } = server();
      let refused = null;
      try {
        const opened = await ServiceSocket.connect(baseUrl, 'not-a-token', { label: 'bad token' });
        opened.terminate();
      } catch (err) {
        refused = err;
      }
      assert.ok(refused !== null, 'GET /v1/websocket with a bad token opened a socket');
      assert.equal(refused.status, 401, `GET /v1/websocket with a bad token must answer 401: ${refused.message}`);
    });

    it('Alice sends a PreKey message through the server; Bob gets it on his socket, decrypts and acknowledges it', async () => {
      const { baseUrl } = server();
      assert.ok(bobSocket && aliceSocket, 'both devices must be connected');

      const fetched = expectStatus(
        await fetchPreKeys(baseUrl, bobAccount.aci, 1, { token: aliceAccount.token }),
        200,
        'GET /v1/keys/{bob}/1',
      );
      const bundle = bundleFromJson(fetched.identityKey, fetched.devices[0]);
      await processPreKeyBundle(bundle, bobAddress, aliceAddress, alice.stores.session, alice.stores.identity);

      const text = `hello Bob, Alice here, through the server (${backend})`;
      const ciphertext = await signalEncrypt(
        encoder.encode(text),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      assert.equal(ciphertext.type(), CiphertextMessageType.PreKey);
      const content = new Uint8Array(ciphertext.serialize());
      const timestamp = Date.now();

      const sentAfter = Date.now();
      const res = await send(
        bobAccount.aci,
        [
          outgoingMessage({
            type: envelopeTypeFor(ciphertext),
            destinationDeviceId: 1,
            destinationRegistrationId: bob.registrationId,
            content,
          }),
        ],
        { token: aliceAccount.token },
        { timestamp, online: false, urgent: true },
      );
      const body = expectStatus(res, 200, 'PUT /v1/messages/{bob} (PreKey message)');
      assert.equal(body.needsSync, false, 'Alice has no other device to sync');
      const sentBefore = Date.now();

      const delivery = await bobSocket.nextEnvelope();
      serverGuids.push(assertDelivery(delivery, {
        type: EnvelopeType.PREKEY_BUNDLE,
        source: { aci: aliceAccount.aci, deviceId: 1 },
        destinationAci: bobAccount.aci,
        clientTimestamp: timestamp,
        content,
        urgent: true,
        sentAfter,
        sentBefore,
      }));

      const plaintext = await signalDecryptPreKey(
        PreKeySignalMessage.deserialize(delivery.envelope.content),
        ProtocolAddress.new(bytesToUuid(delivery.envelope.sourceServiceId), delivery.envelope.sourceDevice),
        bobAddress,
        bob.stores.session,
        bob.stores.identity,
        bob.stores.preKey,
        bob.stores.signedPreKey,
        bob.stores.kyberPreKey,
      );
      assert.equal(decoder.decode(plaintext), text);
      await bobSocket.respond(delivery.request.id, 200);
    });

    it('refuses a send with a wrong device list (409) or a stale registration id (410), and delivers nothing', async () => {
      assert.ok(bobAccount && aliceAccount, 'both accounts must exist');
      const auth = { token: aliceAccount.token };
      const timestamp = Date.now();
      const junk = () => new Uint8Array(randomBytes(48));

      const extra = await send(
        bobAccount.aci,
        [
          outgoingMessage({
            type: EnvelopeType.CIPHERTEXT,
            destinationDeviceId: 1,
            destinationRegistrationId: bob.registrationId,
            content: junk(),
          }),
          outgoingMessage({
            type: EnvelopeType.CIPHERTEXT,
            destinationDeviceId: 2,
            destinationRegistrationId: 1,
            content: junk(),
          }),
        ],
        auth,
        { timestamp },
      );
      assert.equal(extra.status, 409, extra.text);
      assert.equal(extra.body?.code, 'mismatched_devices', extra.text);
      assert.deepEqual(extra.body.missingDevices, [], extra.text);
      assert.deepEqual(extra.body.extraDevices, [2], extra.text);

      const missing = await send(bobAccount.aci, [], auth, { timestamp });
      assert.equal(missing.status, 409, missing.text);
      assert.equal(missing.body?.code, 'mismatched_devices', missing.text);
      assert.deepEqual(missing.body.missingDevices, [1], missing.text);
      assert.deepEqual(missing.body.extraDevices, [], missing.text);

      const stale = await send(
        bobAccount.aci,
        [
          outgoingMessage({
            type: EnvelopeType.CIPHERTEXT,
            destinationDeviceId: 1,
            destinationRegistrationId: otherRegistrationId(bob.registrationId),
            content: junk(),
          }),
        ],
        auth,
        { timestamp },
      );
      assert.equal(stale.status, 410, stale.text);
      assert.equal(stale.body?.code, 'stale_devices', stale.text);
      assert.deepEqual(stale.body.staleDevices, [1], stale.text);
      // Nothing reached Bob: the next envelope he gets (sealed sender, below)
      // is checked byte for byte, and his queue is checked empty at the end.
    });

    it('Bob replies; Alice refuses the first delivery, a second socket displaces hers (4409) and gets it again', async () => {
      const { baseUrl } = server();
      assert.ok(bobSocket && aliceSocket, 'both devices must be connected');

      const text = `hi Alice, Bob replying through the server (${backend})`;
      const ciphertext = await signalEncrypt(
        encoder.encode(text),
        aliceAddress,
        bobAddress,
        bob.stores.session,
        bob.stores.identity,
      );
      assert.equal(ciphertext.type(), CiphertextMessageType.Whisper);
      const content = new Uint8Array(ciphertext.serialize());
      const timestamp = Date.now();
      const sentAfter = Date.now();
      const body = expectStatus(
        await send(
          aliceAccount.aci,
          [
            outgoingMessage({
              type: envelopeTypeFor(ciphertext),
              destinationDeviceId: 1,
              destinationRegistrationId: alice.registrationId,
              content,
            }),
          ],
          { token: bobAccount.token },
          { timestamp },
        ),
        200,
        'PUT /v1/messages/{alice} (Signal message)',
      );
      assert.equal(body.needsSync, false);
      const sentBefore = Date.now();
      const expected = {
        type: EnvelopeType.CIPHERTEXT,
        source: { aci: bobAccount.aci, deviceId: 1 },
        destinationAci: aliceAccount.aci,
        clientTimestamp: timestamp,
        content,
        urgent: true, // not given: the default
        sentAfter,
        sentBefore,
      };

      const first = await aliceSocket.nextEnvelope();
      const guid = assertDelivery(first, expected);
      serverGuids.push(guid);
      // A non-2xx answer is no acknowledgement: the message stays queued.
      await aliceSocket.respond(first.request.id, 500, 'Internal Server Error');

      const displaced = aliceSocket;
      aliceSocket = await ServiceSocket.connect(baseUrl, aliceAccount.token, { label: 'Alice (second socket)' });
      let timer;
      const closeInfo = await Promise.race([
        displaced.closed,
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error('the first socket was not closed after a second one connected')),
            SOCKET_CLOSE_TIMEOUT_MS,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      assert.equal(closeInfo.code, 4409, 'the displaced socket is closed with code 4409');

      const backlog = await aliceSocket.drainUntilQueueEmpty();
      assert.equal(backlog.length, 1, 'the refused message is delivered again, once');
      assert.equal(assertDelivery(backlog[0], { ...expected, sentBefore: Date.now() }), guid, 'same server guid');

      const plaintext = await signalDecrypt(
        SignalMessage.deserialize(backlog[0].envelope.content),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      assert.equal(decoder.decode(plaintext), text);
      await aliceSocket.respond(backlog[0].request.id, 200);
    });

    it('serves a trust root and a delivery certificate that the library validates', async () => {
      const { baseUrl } = server();
      assert.ok(aliceAccount, 'Alice must be registered');

      const rootRes = await trustRoot(baseUrl); // no credentials
      const rootBody = expectStatus(rootRes, 200, 'GET /v1/certificate/trust-root');
      const rootBytes = fromB64(rootBody.publicKey);
      assert.equal(rootBytes.length, 33, 'the trust root is a 33-byte serialized public key');
      assert.equal(rootBytes[0], 0x05, 'the trust root is a Curve25519 key (type byte 0x05)');
      root = PublicKey.deserialize(rootBytes);

      const certBody = expectStatus(
        await deliveryCertificate(baseUrl, aliceAccount.token),
        200,
        'GET /v1/certificate/delivery',
      );
      const cert = SenderCertificate.deserialize(fromB64(certBody.certificate));
      const now = Date.now();
      assert.equal(cert.validate(root, now), true, 'the certificate chain validates against the trust root now');
      assert.equal(cert.senderUuid(), aliceAccount.aci, 'the certificate names Alice by her ACI');
      assert.equal(cert.senderAci()?.getServiceIdString(), aliceAccount.aci);
      assert.equal(cert.senderE164(), null, 'no phone number in the certificate');
      assert.equal(cert.senderDeviceId(), 1);
      assert.deepEqual(
        cert.key().serialize(),
        alice.identityKeyPair.publicKey.serialize(),
        'the certificate binds Alice\'s identity key',
      );
      assert.ok(cert.expiration() > now, `the certificate is not expired (expiration ${cert.expiration()} ms)`);
      assert.equal(cert.validate(root, cert.expiration() + 1), false, 'the certificate expires at its expiration');
      assert.equal(
        cert.validate(PrivateKey.generate().getPublicKey(), now),
        false,
        'the certificate does not validate against another trust root',
      );
      assert.equal(
        cert.serverCertificate().key().verify(cert.certificate(), cert.signature()),
        true,
        'the sender certificate is signed by the server certificate key',
      );

      // Unauthenticated requests get no certificate.
      const anonymous = await deliveryCertificate(baseUrl, undefined);
      assert.equal(anonymous.status, 401, anonymous.text);
    });

    it('relays a sealed-sender message sent with only the access key; Bob learns the sender by decrypting', async () => {
      assert.ok(root, 'the trust root must have been fetched');
      assert.ok(bobSocket && aliceSocket, 'both devices must be connected');
      const { baseUrl } = server();
      const certBody = expectStatus(
        await deliveryCertificate(baseUrl, aliceAccount.token),
        200,
        'GET /v1/certificate/delivery',
      );
      const cert = SenderCertificate.deserialize(fromB64(certBody.certificate));

      const text = `sealed hello from Alice (${backend})`;
      const content = await sealedSenderEncryptMessage(
        encoder.encode(text),
        bobAddress,
        cert,
        alice.stores.session,
        alice.stores.identity,
      );
      const timestamp = Date.now();
      const sealed = (bytes) => [
        outgoingMessage({
          type: EnvelopeType.UNIDENTIFIED_SENDER,
          destinationDeviceId: 1,
          destinationRegistrationId: bob.registrationId,
          content: bytes,
        }),
      ];

      const junk = () => new Uint8Array(randomBytes(64));
      const wrongKey = await send(
        bobAccount.aci,
        sealed(junk()),
        { unidentifiedAccessKey: otherKey16(bobAccessKey) },
        { timestamp },
      );
      assert.equal(wrongKey.status, 401, `a wrong Unidentified-Access-Key must get 401: ${wrongKey.text}`);
      const noCredentials = await send(bobAccount.aci, sealed(junk()), undefined, { timestamp });
      assert.equal(noCredentials.status, 401, `no credentials must get 401: ${noCredentials.text}`);

      const sentAfter = Date.now();
      const ok = await send(
        bobAccount.aci,
        sealed(content),
        { unidentifiedAccessKey: bobAccessKey },
        { timestamp, urgent: true },
      );
      const body = expectStatus(ok, 200, 'PUT /v1/messages/{bob} (sealed sender, access key only)');
      assert.equal(body.needsSync, false, 'the server does not know the sender, so there is nothing to sync');
      const sentBefore = Date.now();

      const delivery = await bobSocket.nextEnvelope();
      serverGuids.push(assertDelivery(delivery, {
        type: EnvelopeType.UNIDENTIFIED_SENDER,
        source: null,
        destinationAci: bobAccount.aci,
        clientTimestamp: timestamp,
        content,
        urgent: true,
        sentAfter,
        sentBefore,
      }));

      const result = await sealedSenderDecryptMessage(
        delivery.envelope.content,
        root,
        Number(delivery.envelope.serverTimestamp),
        null,
        bobAccount.aci,
        bobAccount.deviceId,
        bob.stores.session,
        bob.stores.identity,
        bob.stores.preKey,
        bob.stores.signedPreKey,
        bob.stores.kyberPreKey,
      );
      assert.equal(result.senderUuid(), aliceAccount.aci, 'the decrypted certificate names Alice');
      assert.equal(result.senderAci()?.getServiceIdString(), aliceAccount.aci);
      assert.equal(result.deviceId(), 1);
      assert.equal(decoder.decode(result.message()), text);
      await bobSocket.respond(delivery.request.id, 200);
    });

    it('lets a device without a socket fetch a message with GET /v1/messages and delete it', async () => {
      const { baseUrl } = server();
      assert.ok(aliceSocket, 'Alice must be connected');
      await aliceSocket.close();

      const text = `Bob again, for Alice offline (${backend})`;
      const ciphertext = await signalEncrypt(
        encoder.encode(text),
        aliceAddress,
        bobAddress,
        bob.stores.session,
        bob.stores.identity,
      );
      const content = new Uint8Array(ciphertext.serialize());
      const timestamp = Date.now();
      const sentAfter = Date.now();
      expectStatus(
        await send(
          aliceAccount.aci,
          [
            outgoingMessage({
              type: envelopeTypeFor(ciphertext),
              destinationDeviceId: 1,
              destinationRegistrationId: alice.registrationId,
              content,
            }),
          ],
          { token: bobAccount.token },
          { timestamp, urgent: false },
        ),
        200,
        'PUT /v1/messages/{alice} (while Alice is offline)',
      );
      const sentBefore = Date.now();

      const listed = expectStatus(await fetchMessages(baseUrl, aliceAccount.token), 200, 'GET /v1/messages (Alice)');
      assert.ok(Array.isArray(listed.messages), JSON.stringify(listed));
      assert.equal(listed.messages.length, 1, JSON.stringify(listed));
      assert.equal(listed.more, false);
      const [m] = listed.messages;
      assert.equal(typeof m.guid, 'string');
      assert.doesNotThrow(() => uuidToBytes(m.guid), `guid ${m.guid} is a UUID`);
      serverGuids.push(m.guid.toLowerCase());
      assert.equal(m.type, EnvelopeType.CIPHERTEXT);
      assert.equal(m.sourceServiceId, bobAccount.aci);
      assert.equal(m.sourceDevice, 1);
      assert.equal(m.destinationServiceId, aliceAccount.aci);
      assert.equal(m.clientTimestamp, timestamp);
      assert.equal(typeof m.serverTimestamp, 'number');
      assertNear(m.serverTimestamp, sentAfter, sentBefore, 'serverTimestamp');
      assert.equal(m.urgent, false);
      assert.deepEqual(fromB64(m.content), content);

      const plaintext = await signalDecrypt(
        SignalMessage.deserialize(fromB64(m.content)),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      assert.equal(decoder.decode(plaintext), text);

      const deleted = await deleteMessage(baseUrl, aliceAccount.token, m.guid);
      assert.equal(deleted.status, 204, deleted.text);
      const afterDelete = expectStatus(
        await fetchMessages(baseUrl, aliceAccount.token),
        200,
        'GET /v1/messages (Alice, after delete)',
      );
      assert.deepEqual(afterDelete.messages, []);
    });

    it('keeps nothing queued once every message is acknowledged', async () => {
      const { baseUrl } = server();
      assert.ok(bobAccount && aliceAccount, 'both accounts must exist');
      // An acknowledgement on the socket may be applied just after it is
      // sent; give the server a moment before calling the queue not empty.
      for (const [who, account] of [['Bob', bobAccount], ['Alice', aliceAccount]]) {
        const res = await pollUntil(
          () => fetchMessages(baseUrl, account.token),
          (r) => r.status === 200 && Array.isArray(r.body?.messages) && r.body.messages.length === 0,
        );
        const body = expectStatus(res, 200, `GET /v1/messages (${who})`);
        assert.deepEqual(body.messages, [], `${who}'s queue: ${res.text}`);
        assert.equal(body.more, false);
      }
    });

    // Checks whatever the tests above got as far as sending and receiving.
    it('never writes an ACI, a message content, a server guid or an access key to its output', async () => {
      const running = server();
      assert.ok(bobAccount && aliceAccount, 'both accounts must exist');
      await bobSocket?.close();
      await aliceSocket?.close();
      await running.stop();
      const out = running.output();
      const lower = out.toLowerCase();
      assert.match(out, /request .*route=/, 'the server logged its requests at debug level');
      for (const aci of [aliceAccount.aci, bobAccount.aci]) {
        assert.ok(!lower.includes(aci.toLowerCase()), `server output contains the ACI ${aci}`);
        assert.ok(!lower.includes(aci.replaceAll('-', '').toLowerCase()), `server output contains the ACI ${aci} (hex)`);
      }
      for (const content of sentContents) {
        assert.ok(!out.includes(content), 'server output contains the base64 of a message content');
      }
      for (const guid of serverGuids) {
        assert.ok(!lower.includes(guid.toLowerCase()), `server output contains the server guid ${guid}`);
      }
      assert.ok(!out.includes(b64(bobAccessKey)), 'server output contains the unidentified access key');
    });
  });
}
