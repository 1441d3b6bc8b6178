// Multi-recipient sealed sender with the official client library: Alice sends one upload made by
// sealedSenderMultiRecipientEncrypt to three accounts of two devices each; each of the six devices opens
// what it received with sealedSenderDecryptToUsmc, sees Alice in the sender certificate, and reads the
// group message with its sender key. The server checks the combined access key (401 when wrong), every
// recipient's device set (410 with the right lists for a stale registration id) and the upload's form
// (400 when truncated).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import {
  ContentHint,
  IdentityKeyPair,
  ProtocolAddress,
  PublicKey,
  SenderCertificate,
  SenderKeyDistributionMessage,
  SenderKeyRecord,
  SenderKeyStore,
  UnidentifiedSenderMessageContent,
  groupDecrypt,
  groupEncrypt,
  processPreKeyBundle,
  processSenderKeyDistributionMessage,
  sealedSenderDecryptToUsmc,
  sealedSenderMultiRecipientEncrypt,
} from '@signalapp/libsignal-client';

import { b64, expectStatus, fromB64, registerAndLogin, request, setAttributes, uploadKeys } from '../lib/api.mjs';
import { bundleFromJson, generatePreKeys, newDeviceIdentity, randomRegistrationId, registrationBody } from '../lib/keys.mjs';
import { uploadBody } from '../lib/keys.mjs';
import { deliveryCertificate, trustRoot } from '../lib/messages.mjs';
import { EnvelopeType } from '../lib/proto.mjs';
import { backends, useServer } from '../lib/server.mjs';
import { ClientStores } from '../lib/stores.mjs';
import { ServiceSocket } from '../lib/ws.mjs';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MRM = 'application/vnd.signal-messenger.mrm';

class MemorySenderKeys extends SenderKeyStore {
  #records = new Map();
  async saveSenderKey(sender, distributionId, record) {
    this.#records.set(`${sender.toString()}|${distributionId}`, record.serialize());
  }
  async getSenderKey(sender, distributionId) {
    const bytes = this.#records.get(`${sender.toString()}|${distributionId}`);
    return bytes ? SenderKeyRecord.deserialize(bytes) : null;
  }
}

/** Links a second device to `primary` (link code, then PUT /v1/devices/link); returns the device. */
async function linkDevice(baseUrl, primary) {
  const code = expectStatus(
    await request(baseUrl, 'GET', '/v1/devices/provisioning/code', { auth: { token: primary.account.token } }),
    200,
    'link code',
  );
  const registrationId = randomRegistrationId();
  const deviceSecret = new Uint8Array(randomBytes(32));
  const device = { identityKeyPair: primary.identityKeyPair, registrationId, deviceSecret };
  device.stores = new ClientStores(primary.identityKeyPair, registrationId);
  const keys = await generatePreKeys(device, { preKeyCount: 2, pqPreKeyCount: 2, lastResortId: 700 });
  const body = uploadBody(keys);
  const linked = expectStatus(
    await request(baseUrl, 'PUT', '/v1/devices/link', {
      json: {
        verificationCode: code.verificationCode,
        deviceSecret: b64(deviceSecret),
        registrationId,
        signedPreKey: body.signedPreKey,
        pqLastResortPreKey: body.pqLastResortPreKey,
      },
    }),
    200,
    'link',
  );
  const token = expectStatus(
    await request(baseUrl, 'POST', '/v1/auth/token', {
      auth: { basic: [linked.aci, linked.deviceId, deviceSecret] },
    }),
    200,
    'token',
  ).token;
  expectStatus(await uploadKeys(baseUrl, token, { preKeys: body.preKeys, pqPreKeys: body.pqPreKeys }), 'success', 'keys');
  return { ...device, account: { aci: linked.aci, deviceId: linked.deviceId, token } };
}

/** The upload with one registration id changed: the first device of the recipient at `index`. */
function withStaleRegistration(upload, index) {
  const bytes = new Uint8Array(upload);
  let at = 2; // version, then a one-byte count (fewer than 128 recipients)
  for (let r = 0; ; r++) {
    at += 17;
    if (r === index) {
      bytes[at + 1] ^= 0x01; // low byte of the registration id
      return bytes;
    }
    for (;;) {
      const more = bytes[at + 1] & 0x80;
      at += 3;
      if (!more) break;
    }
    at += 48;
  }
}

function xor(keys) {
  const out = new Uint8Array(16);
  for (const key of keys) key.forEach((b, i) => { out[i] ^= b; });
  return out;
}

for (const backend of backends) {
  describe(`multi-recipient sealed sender (${backend})`, () => {
    const server = useServer(backend);

    it('one upload reaches six devices of three accounts, each opens it and sees the sender', async () => {
      const { baseUrl } = server();
      const alice = newDeviceIdentity();
      alice.account = await registerAndLogin(baseUrl, registrationBody(alice), alice.deviceSecret);
      const aliceAddress = ProtocolAddress.new(alice.account.aci, 1);

      // Three recipients, two devices each, an access key each.
      const members = [];
      for (let i = 0; i < 3; i++) {
        const primary = newDeviceIdentity();
        primary.account = await registerAndLogin(baseUrl, registrationBody(primary), primary.deviceSecret);
        const keys = await generatePreKeys(primary, { preKeyCount: 2, pqPreKeyCount: 2, lastResortId: 700 });
        expectStatus(await uploadKeys(baseUrl, primary.account.token, uploadBody(keys)), 'success', 'keys');
        primary.accessKey = new Uint8Array(randomBytes(16));
        expectStatus(
          await setAttributes(baseUrl, primary.account.token, { unidentifiedAccessKey: b64(primary.accessKey) }),
          'success',
          'attributes',
        );
        const second = await linkDevice(baseUrl, primary);
        members.push({ primary, devices: [primary, second] });
      }

      // Alice opens a session with every device from its bundle, and shares her sender key with each.
      const addresses = [];
      const distributionId = '0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f';
      const aliceSenderKeys = new MemorySenderKeys();
      const distribution = await SenderKeyDistributionMessage.create(aliceAddress, distributionId, aliceSenderKeys);
      for (const member of members) {
        const bundle = expectStatus(
          await request(baseUrl, 'GET', `/v1/keys/${member.primary.account.aci}/*`, { auth: { token: alice.account.token } }),
          200,
          'bundle',
        );
        assert.equal(bundle.devices.length, 2);
        for (const device of bundle.devices) {
          const address = ProtocolAddress.new(member.primary.account.aci, device.deviceId);
          await processPreKeyBundle(bundleFromJson(bundle.identityKey, device), address, aliceAddress, alice.stores.session, alice.stores.identity);
          addresses.push(address);
        }
        for (const device of member.devices) {
          device.senderKeys = new MemorySenderKeys();
          // In a real app the distribution message travels inside an ordinary 1:1 message; the server's part
          // under test here is the multi-recipient upload.
          await processSenderKeyDistributionMessage(aliceAddress, distribution, device.senderKeys);
        }
      }

      const certificate = SenderCertificate.deserialize(
        fromB64(expectStatus(await deliveryCertificate(baseUrl, alice.account.token), 200, 'certificate').certificate),
      );
      const text = `hello, group (${backend})`;
      const groupMessage = await groupEncrypt(aliceAddress, distributionId, aliceSenderKeys, encoder.encode(text));
      const content = UnidentifiedSenderMessageContent.new(groupMessage, certificate, ContentHint.Implicit, new Uint8Array(32).fill(5));
      const upload = await sealedSenderMultiRecipientEncrypt(content, addresses, alice.stores.identity, alice.stores.session);
      const combined = xor(members.map((m) => m.primary.accessKey));
      const put = (body, key) => fetch(new URL('/v1/messages/multi_recipient?ts=4242&urgent=true', baseUrl), {
        method: 'PUT',
        headers: { 'content-type': MRM, 'unidentified-access-key': b64(key) },
        body,
      });

      // Refusals first: nothing is queued by any of them.
      const wrong = await put(upload, xor([combined, new Uint8Array(16).fill(1)]));
      assert.equal(wrong.status, 401, await wrong.text());
      const truncated = await put(upload.subarray(0, 40), combined);
      assert.equal(truncated.status, 400);
      assert.equal((await truncated.json()).code, 'invalid_multi_recipient_message');
      const stale = await put(withStaleRegistration(upload, 1), combined);
      assert.equal(stale.status, 410);
      const staleBody = await stale.json();
      assert.equal(staleBody.code, 'stale_devices');
      assert.deepEqual(staleBody.recipients, [
        { uuid: addresses[2].serviceId().getServiceIdString(), devices: { staleDevices: [addresses[2].deviceId()] } },
      ]);

      const sent = await put(upload, combined);
      assert.equal(sent.status, 200, await sent.clone().text());
      assert.deepEqual(await sent.json(), { uuids404: [], notQueued: [] });

      const root = PublicKey.deserialize(fromB64(expectStatus(await trustRoot(baseUrl), 200, 'trust root').publicKey));
      let opened = 0;
      for (const member of members) {
        for (const device of member.devices) {
          const socket = await ServiceSocket.connect(baseUrl, device.account.token, { label: `device ${device.account.deviceId}` });
          const [delivery, ...rest] = await socket.drainUntilQueueEmpty();
          assert.equal(rest.length, 0, 'one envelope per device');
          await socket.respond(delivery.request.id, 200);
          assert.equal(delivery.envelope.type, EnvelopeType.UNIDENTIFIED_SENDER);
          assert.equal(delivery.envelope.sourceServiceId ?? null, null, 'the envelope does not name the sender');
          const usmc = await sealedSenderDecryptToUsmc(delivery.envelope.content, device.stores.identity);
          assert.equal(usmc.senderCertificate().validate(root, Date.now()), true);
          assert.equal(usmc.senderCertificate().senderUuid(), alice.account.aci, 'the certificate names Alice');
          const plain = await groupDecrypt(aliceAddress, device.senderKeys, usmc.contents());
          assert.equal(decoder.decode(plain), text);
          opened += 1;
          await socket.close();
        }
      }
      assert.equal(opened, 6);
    });
  });
}
