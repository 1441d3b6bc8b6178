// First contact through a QR contact token, with the official client library: Alice shows a token; Bob,
// who knows nothing but its URI, resolves it, fetches Alice's bundle with it (no account of Alice's in
// his hands, no access key), opens a PQXDH session and sends a sealed-sender call offer authorised by the
// token. Alice decrypts it, learns who calls from the sender certificate, and answers over the session.
// Once Alice revokes the token, resolving it again answers 404.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  ProtocolAddress,
  PublicKey,
  SenderCertificate,
  processPreKeyBundle,
  sealedSenderDecryptMessage,
  sealedSenderEncryptMessage,
  signalDecrypt,
  signalDecryptPreKey,
  PreKeySignalMessage,
  SignalMessage,
  signalEncrypt,
  CiphertextMessageType,
} from '@signalapp/libsignal-client';

import { expectStatus, fromB64, registerAndLogin, request, uploadKeys, b64 } from '../lib/api.mjs';
import { bundleFromJson, generatePreKeys, newDeviceIdentity, registrationBody, uploadBody } from '../lib/keys.mjs';
import { deliveryCertificate, envelopeTypeFor, outgoingMessage, sendMessages, trustRoot } from '../lib/messages.mjs';
import { EnvelopeType } from '../lib/proto.mjs';
import { backends, useServer } from '../lib/server.mjs';
import { ServiceSocket } from '../lib/ws.mjs';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

for (const backend of backends) {
  describe(`first contact through a contact token (${backend})`, () => {
    const server = useServer(backend);
    const alice = newDeviceIdentity();
    const bob = newDeviceIdentity();

    it('Bob reaches Alice from nothing but the URI, and the token stops working once revoked', async () => {
      const { baseUrl } = server();
      const aliceAccount = await registerAndLogin(baseUrl, registrationBody(alice), alice.deviceSecret);
      const aliceKeys = await generatePreKeys(alice, { preKeyCount: 3, pqPreKeyCount: 3, lastResortId: 900 });
      expectStatus(await uploadKeys(baseUrl, aliceAccount.token, uploadBody(aliceKeys)), 'success', 'Alice keys');
      const bobAccount = await registerAndLogin(baseUrl, registrationBody(bob), bob.deviceSecret);
      const bobKeys = await generatePreKeys(bob, { preKeyCount: 3, pqPreKeyCount: 3, lastResortId: 900 });
      expectStatus(await uploadKeys(baseUrl, bobAccount.token, uploadBody(bobKeys)), 'success', 'Bob keys');

      // Alice shows a QR code: the URI is all Bob gets.
      const created = expectStatus(
        await request(baseUrl, 'POST', '/v1/contact-tokens', {
          json: { ttlSeconds: 600, label: b64(encoder.encode('for the conference')) },
          auth: { token: aliceAccount.token },
        }),
        201,
        'POST /v1/contact-tokens',
      );
      const uri = created.uri;
      assert.match(uri, /^sealpost:\/\/contact\/[A-Za-z0-9_-]{43}$/, 'the QR code holds a random token and nothing else');
      assert.ok(!uri.includes(aliceAccount.aci), 'no account id in the QR code');

      // Bob resolves it: no credentials needed.
      const token = uri.slice('sealpost://contact/'.length);
      const resolved = expectStatus(await request(baseUrl, 'GET', `/v1/contact/${token}`), 200, 'GET /v1/contact');
      assert.equal(resolved.aci, aliceAccount.aci);
      assert.deepEqual(fromB64(resolved.identityKey), alice.identityKeyPair.publicKey.serialize());

      // Bob fetches Alice's bundle with the token alone and opens a PQXDH session.
      const bundle = expectStatus(
        await request(baseUrl, 'GET', `/v1/keys/${resolved.aci}/*`, { headers: { 'contact-token': token } }),
        200,
        'GET /v1/keys with Contact-Token',
      );
      const aliceAddress = ProtocolAddress.new(resolved.aci, 1);
      const bobAddress = ProtocolAddress.new(bobAccount.aci, 1);
      await processPreKeyBundle(
        bundleFromJson(bundle.identityKey, bundle.devices[0]),
        aliceAddress,
        bobAddress,
        bob.stores.session,
        bob.stores.identity,
      );

      // A sealed-sender call offer, authorised by the token (Bob has no access key of Alice's).
      const aliceSocket = await ServiceSocket.connect(baseUrl, aliceAccount.token, { label: 'Alice' });
      await aliceSocket.drainUntilQueueEmpty();
      const certificate = SenderCertificate.deserialize(
        fromB64(expectStatus(await deliveryCertificate(baseUrl, bobAccount.token), 200, 'certificate').certificate),
      );
      const offer = JSON.stringify({ call: { id: '9f2c', type: 'offer', sdp: 'v=0 (a real SDP in a real app)' } });
      const sealed = await sealedSenderEncryptMessage(
        encoder.encode(offer),
        aliceAddress,
        certificate,
        bob.stores.session,
        bob.stores.identity,
      );
      const sent = await request(baseUrl, 'PUT', `/v1/messages/${resolved.aci}`, {
        json: {
          messages: [outgoingMessage({
            type: EnvelopeType.UNIDENTIFIED_SENDER,
            destinationRegistrationId: bundle.devices[0].registrationId,
            content: sealed,
          })],
          timestamp: Date.now(),
          urgent: true,
          ttlSeconds: 60,
        },
        headers: { 'contact-token': token },
      });
      expectStatus(sent, 200, 'sealed call offer with Contact-Token');

      // Alice decrypts: the certificate tells her who calls; the envelope never did.
      const delivery = await aliceSocket.nextEnvelope();
      await aliceSocket.respond(delivery.request.id, 200);
      assert.equal(delivery.envelope.type, EnvelopeType.UNIDENTIFIED_SENDER);
      assert.equal(delivery.envelope.sourceServiceId ?? null, null, 'no source on the envelope');
      const root = PublicKey.deserialize(fromB64(expectStatus(await trustRoot(baseUrl), 200, 'trust root').publicKey));
      const opened = await sealedSenderDecryptMessage(
        delivery.envelope.content,
        root,
        Number(delivery.envelope.serverTimestamp),
        null,
        aliceAccount.aci,
        1,
        alice.stores.session,
        alice.stores.identity,
        alice.stores.preKey,
        alice.stores.signedPreKey,
        alice.stores.kyberPreKey,
      );
      assert.equal(opened.senderUuid(), bobAccount.aci, 'the sender certificate names Bob');
      assert.equal(decoder.decode(opened.message()), offer);

      // Alice answers over the session the offer opened.
      const answer = JSON.stringify({ call: { id: '9f2c', type: 'answer', sdp: 'v=0' } });
      const reply = await signalEncrypt(
        encoder.encode(answer),
        bobAddress,
        aliceAddress,
        alice.stores.session,
        alice.stores.identity,
      );
      expectStatus(
        await sendMessages(baseUrl, bobAccount.aci, {
          messages: [outgoingMessage({
            type: envelopeTypeFor(reply),
            destinationRegistrationId: bob.registrationId,
            content: reply.serialize(),
          })],
          timestamp: Date.now(),
          urgent: true,
          ttlSeconds: 60,
        }, { token: aliceAccount.token }),
        200,
        'the answer',
      );
      const bobSocket = await ServiceSocket.connect(baseUrl, bobAccount.token, { label: 'Bob' });
      const [answered] = await bobSocket.drainUntilQueueEmpty();
      await bobSocket.respond(answered.request.id, 200);
      const plain = reply.type() === CiphertextMessageType.PreKey
        ? await signalDecryptPreKey(
          PreKeySignalMessage.deserialize(answered.envelope.content),
          aliceAddress,
          bobAddress,
          bob.stores.session,
          bob.stores.identity,
          bob.stores.preKey,
          bob.stores.signedPreKey,
          bob.stores.kyberPreKey,
        )
        : await signalDecrypt(
          SignalMessage.deserialize(answered.envelope.content),
          aliceAddress,
          bobAddress,
          bob.stores.session,
          bob.stores.identity,
        );
      assert.equal(decoder.decode(plain), answer);

      // The owner sees the token, used once, but never the token itself.
      const listed = expectStatus(
        await request(baseUrl, 'GET', '/v1/contact-tokens', { auth: { token: aliceAccount.token } }),
        200,
        'list',
      );
      assert.equal(listed.tokens.length, 1);
      assert.equal(listed.tokens[0].uses, 1, 'one requester fetched the bundle through it');
      assert.ok(!JSON.stringify(listed).includes(token), 'the token is shown only when created');

      // Revoked: Bob's second resolution is 404, and the token opens nothing any more.
      expectStatus(
        await request(baseUrl, 'DELETE', `/v1/contact-tokens/${created.id}`, { auth: { token: aliceAccount.token } }),
        204,
        'revoke',
      );
      const again = await request(baseUrl, 'GET', `/v1/contact/${token}`);
      assert.equal(again.status, 404, again.text);
      assert.equal(again.body.code, 'not_found');
      const refetch = await request(baseUrl, 'GET', `/v1/keys/${resolved.aci}/*`, { headers: { 'contact-token': token } });
      assert.equal(refetch.status, 401, refetch.text);

      await aliceSocket.close();
      await bobSocket.close();
    });
  });
}
