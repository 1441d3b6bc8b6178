// The demo page's cryptography (src/demo/assets/crypto.js) under Node's WebCrypto, which has the same
// Ed25519 and X25519 as the browser: its signatures are the XEdDSA that libsignal makes and checks (the
// fixtures the server's own XEdDSA tests use were made by libsignal), and both ends derive one session key.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import {
  montgomeryFromEdwards,
  newAgreementKey,
  newIdentity,
  open,
  seal,
  sessionKey,
  verifyXeddsa,
} from '../../../src/demo/assets/crypto.js';

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));
const fixtures = JSON.parse(readFileSync(new URL('../../fixtures/xeddsa.json', import.meta.url), 'utf8'));

test("libsignal's XEdDSA signatures verify exactly when they are valid", async () => {
  assert.ok(fixtures.length >= 10);
  for (const f of fixtures) {
    const verdict = await verifyXeddsa(bytes(f.publicKey), bytes(f.message), bytes(f.signature));
    assert.equal(verdict, f.valid, f.description);
  }
});

test('the page signs as XEdDSA by the identity key it publishes', async () => {
  const identity = await newIdentity();
  assert.equal(identity.publicKey.length, 33);
  assert.equal(identity.publicKey[0], 0x05);
  for (const message of [new Uint8Array(), new TextEncoder().encode('a prekey'), new Uint8Array(1569).fill(8)]) {
    const signature = await identity.sign(message);
    assert.ok(await verifyXeddsa(identity.publicKey, message, signature));
    const tampered = Uint8Array.from(message.length ? message : [0]);
    tampered[0] ^= 1;
    assert.equal(await verifyXeddsa(identity.publicKey, tampered, signature), false);
  }
  // The Ed25519 base point (y = 4/5) is the X25519 base point (u = 9).
  const base = Uint8Array.from(Buffer.from('5866666666666666666666666666666666666666666666666666666666666666', 'hex'));
  assert.equal(montgomeryFromEdwards(base)[0], 9);
  assert.ok(montgomeryFromEdwards(base).subarray(1).every((b) => b === 0));
});

test('caller and owner derive one session key; a sealed message opens only with it', async () => {
  const owner = await newAgreementKey();
  const caller = await newAgreementKey();
  const callerKey = await sessionKey(caller.privateKey, owner.publicKey);
  const ownerKey = await sessionKey(owner.privateKey, caller.publicKey);
  const sealed = await seal(callerKey, { type: 'offer', sdp: 'v=0' });
  assert.deepEqual(await open(ownerKey, sealed), { type: 'offer', sdp: 'v=0' });
  const stranger = await sessionKey((await newAgreementKey()).privateKey, owner.publicKey);
  await assert.rejects(open(stranger, sealed));
});
