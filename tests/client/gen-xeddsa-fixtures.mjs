// Writes ../fixtures/xeddsa.json: XEdDSA test vectors made with the official
// client library, for the server's own signature verifier to be tested
// against. Run from tests/client: `node gen-xeddsa-fixtures.mjs`
// (or `npm run gen-xeddsa-fixtures`). XEdDSA signatures are randomized, so
// every run writes different, equally valid vectors.
//
// The file is a JSON array of vectors made with the pinned library version.
// Each vector: { description, publicKey, message, signature, valid }, with
// publicKey (33 bytes, 0x05 prefix), message and signature (64 bytes) in
// standard base64. `valid` says whether the signature verifies; every flag is
// checked with the library's own verifier (PublicKey.verify) before writing.
// The valid vectors come from two identities whose Edwards sign bits (the top
// bit of signature byte 63) differ, so both values are covered.

import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { IdentityKeyPair, KEMKeyPair, PrivateKey } from '@signalapp/libsignal-client';

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(here, '../fixtures/xeddsa.json');

const b64 = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const utf8 = (text) => new Uint8Array(Buffer.from(text, 'utf8'));

/** A copy of `bytes` with one bit flipped. */
function flipBit(bytes, byteIndex, bit) {
  const copy = new Uint8Array(bytes);
  copy[byteIndex] ^= 1 << bit;
  return copy;
}

// XEdDSA carries the sign bit of the signer's Edwards public key in the top
// bit of signature byte 63; it is fixed per key. Pick one identity of each
// kind, so a verifier that mishandles either value fails a valid vector.
function edwardsSignBit(keyPair) {
  return keyPair.privateKey.sign(new Uint8Array(0))[63] >> 7;
}
function identityWithSignBit(bit) {
  for (;;) {
    const keyPair = IdentityKeyPair.generate();
    if (edwardsSignBit(keyPair) === bit) {
      return keyPair;
    }
  }
}
const alice = identityWithSignBit(0);
const bob = identityWithSignBit(1);
const other = IdentityKeyPair.generate();

const ecPublicKey = PrivateKey.generate().getPublicKey().serialize();
const kyberPublicKey = KEMKeyPair.generate().getPublicKey().serialize();
const otherKyberPublicKey = KEMKeyPair.generate().getPublicKey().serialize();
const text = utf8('sealpost XEdDSA test vector');

if (ecPublicKey.length !== 33 || ecPublicKey[0] !== 0x05) {
  throw new Error(`unexpected EC public key serialization (${ecPublicKey.length} bytes)`);
}
if (kyberPublicKey.length !== 1569 || kyberPublicKey[0] !== 0x08) {
  throw new Error(`unexpected Kyber public key serialization (${kyberPublicKey.length} bytes)`);
}

const vectors = [];

function add(description, signer, message, signature, valid) {
  vectors.push({ description, signer, message, signature, valid });
}

function addSigned(description, signer, message) {
  add(description, signer, message, signer.privateKey.sign(message), true);
}

// Valid signatures.
addSigned('signed EC prekey: 33-byte EC public key', alice, ecPublicKey);
addSigned('Kyber prekey: 1569-byte Kyber-1024 public key serialization', alice, kyberPublicKey);
addSigned('empty message', alice, new Uint8Array(0));
addSigned('short UTF-8 text', alice, text);
addSigned('another identity: Kyber public key', bob, otherKyberPublicKey);
addSigned('another identity: EC public key', bob, ecPublicKey);
addSigned('one zero byte', bob, new Uint8Array(1));
addSigned('1000 bytes 0x00..0xff repeating', alice, Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff));

// Invalid signatures.
add(
  'signature made by another key over the same message',
  alice,
  ecPublicKey,
  other.privateKey.sign(ecPublicKey),
  false,
);
const kyberSignature = alice.privateKey.sign(kyberPublicKey);
add('one bit flipped in the signature (R half)', alice, kyberPublicKey, flipBit(kyberSignature, 5, 3), false);
add('one bit flipped in the signature (s half)', alice, kyberPublicKey, flipBit(kyberSignature, 40, 0), false);
add(
  'one bit flipped in the message',
  alice,
  flipBit(ecPublicKey, 32, 7),
  alice.privateKey.sign(ecPublicKey),
  false,
);
add(
  'valid signature of the empty message, checked against one zero byte',
  alice,
  new Uint8Array(1),
  alice.privateKey.sign(new Uint8Array(0)),
  false,
);
add(
  'sign bit (top bit of signature byte 63) flipped',
  bob,
  text,
  flipBit(bob.privateKey.sign(text), 63, 7),
  false,
);

// Check every flag with the library before writing anything.
for (const v of vectors) {
  if (v.signature.length !== 64) {
    throw new Error(`${v.description}: signature is ${v.signature.length} bytes`);
  }
  const verified = v.signer.publicKey.verify(v.message, v.signature);
  if (verified !== v.valid) {
    throw new Error(`${v.description}: library says ${verified}, vector says ${v.valid}`);
  }
}

// A bare array: the Rust test (src/crypto/xeddsa.rs) reads it as one.
const out = vectors.map((v) => ({
  description: v.description,
  publicKey: b64(v.signer.publicKey.serialize()),
  message: b64(v.message),
  signature: b64(v.signature),
  valid: v.valid,
}));

writeFileSync(outPath, `${JSON.stringify(out, null, 2)}\n`);
const valid = vectors.filter((v) => v.valid).length;
console.log(`wrote ${outPath}: ${valid} valid and ${vectors.length - valid} invalid vectors, all checked`);
