// PQXDH acceptance: Bob uploads keys made by the official client library,
// Alice fetches a bundle from the server, and the two complete a real
// PQXDH handshake and a reply with the library. This proves the server stores
// and hands out prekeys byte-exactly, with signatures intact, one-time keys
// consumed once, and access by bearer token or by unidentified access key.

import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { before, describe, it } from 'node:test';

import {
  CiphertextMessageType,
  PreKeySignalMessage,
  ProtocolAddress,
  SignalMessage,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';

import {
  b64,
  expectStatus,
  fetchPreKeys,
  fromB64,
  keyCount,
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
import { backends, useServer } from '../lib/server.mjs';

const SIGNED_PREKEY_ID = 7;
const LAST_RESORT_ID = 5000;
const PREKEY_IDS = { first: 1, count: 100 };
const PQ_PREKEY_IDS = { first: 101, count: 100 };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Checks the JSON of GET /v1/keys/{aci}/1 against what Bob uploaded. */
function assertBundleMatchesUpload(body, bob, bobKeys) {
  assert.equal(typeof body.identityKey, 'string');
  assert.deepEqual(fromB64(body.identityKey), bob.identityKeyPair.publicKey.serialize());
  assert.ok(Array.isArray(body.devices), JSON.stringify(body));
  assert.equal(body.devices.length, 1, JSON.stringify(body));
  const [device] = body.devices;
  assert.equal(device.deviceId, 1);
  assert.equal(device.registrationId, bob.registrationId);

  assert.equal(device.signedPreKey.keyId, SIGNED_PREKEY_ID);
  assert.deepEqual(fromB64(device.signedPreKey.publicKey), bobKeys.signedPreKey.publicKey.serialize());
  assert.deepEqual(fromB64(device.signedPreKey.signature), bobKeys.signedPreKey.signature);

  assert.ok(device.preKey, 'a one-time EC prekey is available and must be handed out');
  const ec = bobKeys.preKeys.find((k) => k.keyId === device.preKey.keyId);
  assert.ok(ec, `preKey id ${device.preKey.keyId} was never uploaded`);
  assert.deepEqual(fromB64(device.preKey.publicKey), ec.publicKey.serialize());

  assert.ok(device.pqPreKey, 'a Kyber prekey must always be handed out');
  assert.notEqual(
    device.pqPreKey.keyId,
    LAST_RESORT_ID,
    'one-time Kyber prekeys remain, so the last-resort key must not be used',
  );
  const pq = bobKeys.pqPreKeys.find((k) => k.keyId === device.pqPreKey.keyId);
  assert.ok(pq, `pqPreKey id ${device.pqPreKey.keyId} was never uploaded`);
  const pqPublic = fromB64(device.pqPreKey.publicKey);
  assert.equal(pqPublic.length, 1569);
  assert.deepEqual(pqPublic, pq.publicKey.serialize());
  assert.deepEqual(fromB64(device.pqPreKey.signature), pq.signature);
  return device;
}

/**
 * Sender (with stores and address) starts a session from a fetched bundle and
 * sends `text` to Bob, who decrypts it with his private keys. Returns the
 * plaintext Bob saw.
 */
async function sendFirstMessage(sender, senderAddress, bob, bobAddress, body, text) {
  const bundle = bundleFromJson(body.identityKey, body.devices[0]);
  await processPreKeyBundle(bundle, bobAddress, senderAddress, sender.stores.session, sender.stores.identity);
  const ciphertext = await signalEncrypt(
    encoder.encode(text),
    bobAddress,
    senderAddress,
    sender.stores.session,
    sender.stores.identity,
  );
  assert.equal(ciphertext.type(), CiphertextMessageType.PreKey);

  // No relay yet: the bytes go to Bob directly.
  const wire = new Uint8Array(ciphertext.serialize());
  const received = PreKeySignalMessage.deserialize(wire);
  assert.equal(received.preKeyId(), body.devices[0].preKey.keyId);
  assert.equal(received.signedPreKeyId(), SIGNED_PREKEY_ID);
  const plaintext = await signalDecryptPreKey(
    received,
    senderAddress,
    bobAddress,
    bob.stores.session,
    bob.stores.identity,
    bob.stores.preKey,
    bob.stores.signedPreKey,
    bob.stores.kyberPreKey,
  );
  return decoder.decode(plaintext);
}

for (const backend of backends) {
  describe(`keys and PQXDH (${backend})`, () => {
    const server = useServer(backend);
    const bob = newDeviceIdentity();
    const alice = newDeviceIdentity();
    let bobKeys;
    let bobAccount;
    let aliceAccount;
    let bobAddress;
    let aliceAddress;
    let fetchedWithToken;
    const accessKey = new Uint8Array(randomBytes(16));

    before(async () => {
      bobKeys = await generatePreKeys(bob, {
        signedPreKeyId: SIGNED_PREKEY_ID,
        lastResortId: LAST_RESORT_ID,
        firstPreKeyId: PREKEY_IDS.first,
        preKeyCount: PREKEY_IDS.count,
        firstPqPreKeyId: PQ_PREKEY_IDS.first,
        pqPreKeyCount: PQ_PREKEY_IDS.count,
      });
    });

    it('Bob registers and uploads a signed prekey, 100 EC and 100 Kyber one-time prekeys and a last-resort key', async () => {
      const { baseUrl } = server();
      bobAccount = await registerAndLogin(baseUrl, registrationBody(bob), bob.deviceSecret);
      bobAddress = ProtocolAddress.new(bobAccount.aci, bobAccount.deviceId);

      const body = uploadBody(bobKeys);
      assert.equal(body.preKeys.length, 100);
      assert.equal(body.pqPreKeys.length, 100);
      expectStatus(await uploadKeys(baseUrl, bobAccount.token, body), 'success', 'PUT /v1/keys');

      const count = expectStatus(await keyCount(baseUrl, bobAccount.token), 200, 'GET /v1/keys/count');
      assert.deepEqual({ count: count.count, pqCount: count.pqCount }, { count: 100, pqCount: 100 });
    });

    it('Alice fetches a bundle, starts a PQXDH session, and Bob decrypts; Bob replies and Alice decrypts', async () => {
      const { baseUrl } = server();
      assert.ok(bobAccount, 'Bob must be registered');
      aliceAccount = await registerAndLogin(baseUrl, registrationBody(alice), alice.deviceSecret);
      aliceAddress = ProtocolAddress.new(aliceAccount.aci, aliceAccount.deviceId);

      const res = await fetchPreKeys(baseUrl, bobAccount.aci, 1, { token: aliceAccount.token });
      const body = expectStatus(res, 200, 'GET /v1/keys/{aci}/1 (token)');
      const device = assertBundleMatchesUpload(body, bob, bobKeys);
      fetchedWithToken = device;

      const hello = `hello Bob, this is Alice on ${backend}`;
      assert.equal(await sendFirstMessage(alice, aliceAddress, bob, bobAddress, body, hello), hello);

      // Bob's library consumed exactly the one-time keys the server handed out.
      assert.deepEqual(bob.stores.preKey.removed, [device.preKey.keyId]);
      assert.deepEqual(
        bob.stores.kyberPreKey.used.map((u) => [u.kyberPreKeyId, u.signedPreKeyId]),
        [[device.pqPreKey.keyId, SIGNED_PREKEY_ID]],
      );

      const reply = `hi Alice, Bob here (${backend})`;
      const replyCiphertext = await signalEncrypt(
        encoder.encode(reply),
        aliceAddress,
        bobAddress,
        bob.stores.session,
        bob.stores.identity,
      );
      assert.equal(replyCiphertext.type(), CiphertextMessageType.Whisper);
      const replyPlain = await signalDecrypt(
        SignalMessage.deserialize(new Uint8Array(replyCiphertext.serialize())),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      assert.equal(decoder.decode(replyPlain), reply);
    });

    it('counts 99 EC and 99 Kyber one-time prekeys after one fetch', async () => {
      const { baseUrl } = server();
      assert.ok(fetchedWithToken, 'the fetch must have succeeded');
      const count = expectStatus(await keyCount(baseUrl, bobAccount.token), 200, 'GET /v1/keys/count');
      assert.deepEqual({ count: count.count, pqCount: count.pqCount }, { count: 99, pqCount: 99 });
    });

    it('hands out a bundle for the right Unidentified-Access-Key and refuses a wrong one or none', async () => {
      const { baseUrl } = server();
      assert.ok(bobAccount, 'Bob must be registered');
      expectStatus(
        await setAttributes(baseUrl, bobAccount.token, {
          unidentifiedAccessKey: b64(accessKey),
          unrestrictedUnidentifiedAccess: false,
        }),
        'success',
        'PUT /v1/accounts/me/attributes',
      );

      let wrongKey = new Uint8Array(randomBytes(16));
      while (Buffer.from(wrongKey).equals(Buffer.from(accessKey))) {
        wrongKey = new Uint8Array(randomBytes(16));
      }
      const wrong = await fetchPreKeys(baseUrl, bobAccount.aci, 1, { unidentifiedAccessKey: wrongKey });
      assert.equal(wrong.status, 401, wrong.text);

      const none = await fetchPreKeys(baseUrl, bobAccount.aci, 1, undefined);
      assert.equal(none.status, 401, none.text);

      const res = await fetchPreKeys(baseUrl, bobAccount.aci, 1, { unidentifiedAccessKey: accessKey });
      const body = expectStatus(res, 200, 'GET /v1/keys/{aci}/1 (Unidentified-Access-Key)');
      const device = assertBundleMatchesUpload(body, bob, bobKeys);
      assert.notEqual(device.preKey.keyId, fetchedWithToken.preKey.keyId, 'a one-time EC prekey was handed out twice');
      assert.notEqual(device.pqPreKey.keyId, fetchedWithToken.pqPreKey.keyId, 'a one-time Kyber prekey was handed out twice');

      // The bundle is usable: a sender with no account at all (as with sealed
      // sender) completes a session with Bob from it.
      const carol = newDeviceIdentity();
      const carolAddress = ProtocolAddress.new(randomUUID(), 1);
      const text = `anonymous hello on ${backend}`;
      assert.equal(await sendFirstMessage(carol, carolAddress, bob, bobAddress, body, text), text);

      // Only the successful fetch consumed keys.
      const count = expectStatus(await keyCount(baseUrl, bobAccount.token), 200, 'GET /v1/keys/count');
      assert.deepEqual({ count: count.count, pqCount: count.pqCount }, { count: 98, pqCount: 98 });
    });
  });
}
