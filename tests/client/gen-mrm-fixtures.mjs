// Writes ../fixtures/multi_recipient.json: a multi-recipient sealed-sender message made with the official
// client library, for the server's own parser to be tested against. Run from tests/client:
// `node gen-mrm-fixtures.mjs` (or `npm run gen-mrm-fixtures`). Keys are random, so every run writes a
// different, equally valid message.
//
// The file: { message (hex of what a sender uploads), recipients: [{ aci, devices: [[deviceId,
// registrationId]], received (hex of what each of its devices gets, as the library's own server-side
// helper makes it) }], excluded: [service id strings] }. Two recipients of two devices each, one excluded
// recipient (a PNI, which the library lists apart).

import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  Aci,
  ContentHint,
  IdentityKeyPair,
  KEMKeyPair,
  KyberPreKeyRecord,
  Pni,
  PreKeyBundle,
  PreKeyRecord,
  PrivateKey,
  ProtocolAddress,
  SenderCertificate,
  ServerCertificate,
  SignedPreKeyRecord,
  UnidentifiedSenderMessageContent,
  processPreKeyBundle,
  sealedSenderMultiRecipientEncrypt,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import SealedSenderMultiRecipientMessage from '@signalapp/libsignal-client/dist/SealedSenderMultiRecipientMessage.js';

import { ClientStores } from './lib/stores.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(here, '../fixtures/multi_recipient.json');
const hex = (bytes) => Buffer.from(bytes).toString('hex');

const trustRoot = PrivateKey.generate();
const serverKey = PrivateKey.generate();
const serverCertificate = ServerCertificate.new(1, serverKey.getPublicKey(), trustRoot);
const sender = Aci.fromUuid('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa');
const senderIdentity = IdentityKeyPair.generate();
const senderStores = new ClientStores(senderIdentity, 1111);
const senderAddress = ProtocolAddress.new(sender, 1);
const certificate = SenderCertificate.new(sender.getServiceIdString(), null, 1, senderIdentity.publicKey,
  Date.now() + 86_400_000, serverCertificate, serverKey);

const specs = [
  { aci: Aci.fromUuid('11111111-1111-4111-8111-111111111111'), devices: [[1, 0x1234], [2, 0x2345]] },
  { aci: Aci.fromUuid('22222222-2222-4222-8222-222222222222'), devices: [[1, 0x0abc], [3, 0x3fff]] },
];
const addresses = [];
for (const spec of specs) {
  const identity = IdentityKeyPair.generate();
  for (const [deviceId, registrationId] of spec.devices) {
    const signed = PrivateKey.generate();
    const kyber = KEMKeyPair.generate();
    const oneTime = PrivateKey.generate();
    const stores = new ClientStores(identity, registrationId);
    const signedSignature = identity.privateKey.sign(signed.getPublicKey().serialize());
    const kyberSignature = identity.privateKey.sign(kyber.getPublicKey().serialize());
    await stores.signedPreKey.saveSignedPreKey(1, SignedPreKeyRecord.new(1, Date.now(), signed.getPublicKey(), signed, signedSignature));
    await stores.kyberPreKey.saveKyberPreKey(1, KyberPreKeyRecord.new(1, Date.now(), kyber, kyberSignature));
    await stores.preKey.savePreKey(1, PreKeyRecord.new(1, oneTime.getPublicKey(), oneTime));
    const bundle = PreKeyBundle.new(registrationId, deviceId, 1, oneTime.getPublicKey(), 1, signed.getPublicKey(),
      signedSignature, identity.publicKey, 1, kyber.getPublicKey(), kyberSignature);
    const address = ProtocolAddress.new(spec.aci, deviceId);
    await processPreKeyBundle(bundle, address, senderAddress, senderStores.session, senderStores.identity);
    addresses.push(address);
  }
}

const inner = await signalEncrypt(new TextEncoder().encode('fixture'), addresses[0], senderAddress,
  senderStores.session, senderStores.identity);
const content = UnidentifiedSenderMessageContent.new(inner, certificate, ContentHint.Default, null);
const message = await sealedSenderMultiRecipientEncrypt({
  content,
  recipients: addresses,
  excludedRecipients: [Pni.fromUuid('33333333-3333-4333-8333-333333333333')],
  identityStore: senderStores.identity,
  sessionStore: senderStores.session,
});

const parsed = new SealedSenderMultiRecipientMessage(message);
const byId = parsed.recipientsByServiceIdString();
const recipients = specs.map((spec) => {
  const entry = byId[spec.aci.getServiceIdString()];
  return {
    aci: spec.aci.getServiceIdString(),
    devices: spec.devices,
    received: hex(parsed.messageForRecipient(entry)),
  };
});
writeFileSync(outPath, `${JSON.stringify({
  message: hex(message),
  recipients,
  excluded: parsed.excludedRecipientServiceIdStrings(),
}, null, 2)}\n`);
console.log(`wrote ${outPath}: ${message.length} bytes, ${recipients.length} recipients`);
