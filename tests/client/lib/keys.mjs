// Key material for a simulated client device, generated with the official
// library, and the conversions between it and the server's JSON.

import { randomBytes, randomInt } from 'node:crypto';

import {
  IdentityKeyPair,
  KEMKeyPair,
  KEMPublicKey,
  KyberPreKeyRecord,
  PreKeyBundle,
  PreKeyRecord,
  PrivateKey,
  PublicKey,
  SignedPreKeyRecord,
} from '@signalapp/libsignal-client';

import { b64, fromB64 } from './api.mjs';
import { ClientStores } from './stores.mjs';

/** A registration id as real clients pick them: 1..=16380. */
export function randomRegistrationId() {
  return randomInt(1, 16381);
}

/**
 * A fresh account-level identity: identity key pair, registration id and the
 * 32-byte device secret used for Basic auth, plus empty stores.
 */
export function newDeviceIdentity() {
  const identityKeyPair = IdentityKeyPair.generate();
  const registrationId = randomRegistrationId();
  const deviceSecret = new Uint8Array(randomBytes(32));
  return {
    identityKeyPair,
    registrationId,
    deviceSecret,
    stores: new ClientStores(identityKeyPair, registrationId),
  };
}

/** JSON body for POST /v1/accounts. */
export function registrationBody(identity) {
  return {
    identityKey: b64(identity.identityKeyPair.publicKey.serialize()),
    registrationId: identity.registrationId,
    deviceSecret: b64(identity.deviceSecret),
  };
}

/**
 * Generates a full prekey set signed by the identity key, stores the private
 * halves in `identity.stores`, and returns the public parts.
 *
 * Ids: the signed prekey, one-time EC prekeys and one-time Kyber prekeys use
 * the ids given; the last-resort Kyber key gets `lastResortId`, which must not
 * collide with the one-time Kyber ids (they share the Kyber store).
 */
export async function generatePreKeys(identity, {
  signedPreKeyId = 1,
  lastResortId = 10_000,
  firstPreKeyId = 1,
  preKeyCount = 100,
  firstPqPreKeyId = 1,
  pqPreKeyCount = 100,
} = {}) {
  const { identityKeyPair, stores } = identity;
  const now = Date.now();
  const sign = (bytes) => identityKeyPair.privateKey.sign(bytes);

  const signedPrivate = PrivateKey.generate();
  const signedPublic = signedPrivate.getPublicKey();
  const signedSignature = sign(signedPublic.serialize());
  await stores.signedPreKey.saveSignedPreKey(
    signedPreKeyId,
    SignedPreKeyRecord.new(signedPreKeyId, now, signedPublic, signedPrivate, signedSignature),
  );

  const lastResortPair = KEMKeyPair.generate();
  const lastResortSignature = sign(lastResortPair.getPublicKey().serialize());
  await stores.kyberPreKey.saveLastResortKyberPreKey(
    lastResortId,
    KyberPreKeyRecord.new(lastResortId, now, lastResortPair, lastResortSignature),
  );

  const preKeys = [];
  for (let i = 0; i < preKeyCount; i++) {
    const id = firstPreKeyId + i;
    const priv = PrivateKey.generate();
    const pub = priv.getPublicKey();
    await stores.preKey.savePreKey(id, PreKeyRecord.new(id, pub, priv));
    preKeys.push({ keyId: id, publicKey: pub });
  }

  const pqPreKeys = [];
  for (let i = 0; i < pqPreKeyCount; i++) {
    const id = firstPqPreKeyId + i;
    const pair = KEMKeyPair.generate();
    const signature = sign(pair.getPublicKey().serialize());
    await stores.kyberPreKey.saveKyberPreKey(id, KyberPreKeyRecord.new(id, now, pair, signature));
    pqPreKeys.push({ keyId: id, publicKey: pair.getPublicKey(), signature });
  }

  return {
    signedPreKey: { keyId: signedPreKeyId, publicKey: signedPublic, signature: signedSignature },
    pqLastResortPreKey: {
      keyId: lastResortId,
      publicKey: lastResortPair.getPublicKey(),
      signature: lastResortSignature,
    },
    preKeys,
    pqPreKeys,
  };
}

/** JSON body for PUT /v1/keys from the result of generatePreKeys. */
export function uploadBody(keys) {
  const signed = (k) => ({
    keyId: k.keyId,
    publicKey: b64(k.publicKey.serialize()),
    signature: b64(k.signature),
  });
  return {
    signedPreKey: signed(keys.signedPreKey),
    pqLastResortPreKey: signed(keys.pqLastResortPreKey),
    preKeys: keys.preKeys.map((k) => ({ keyId: k.keyId, publicKey: b64(k.publicKey.serialize()) })),
    pqPreKeys: keys.pqPreKeys.map(signed),
  };
}

/**
 * Builds the library's PreKeyBundle from the identity key and one element of
 * `devices` in the JSON of GET /v1/keys/{aci}/{deviceId}. The one-time EC
 * prekey is optional (the server may have run out); the Kyber prekey is not
 * (the server falls back to the last-resort key).
 */
export function bundleFromJson(identityKeyB64, device) {
  const pre = device.preKey ?? null;
  return PreKeyBundle.new(
    device.registrationId,
    device.deviceId,
    pre === null ? null : pre.keyId,
    pre === null ? null : PublicKey.deserialize(fromB64(pre.publicKey)),
    device.signedPreKey.keyId,
    PublicKey.deserialize(fromB64(device.signedPreKey.publicKey)),
    fromB64(device.signedPreKey.signature),
    PublicKey.deserialize(fromB64(identityKeyB64)),
    device.pqPreKey.keyId,
    KEMPublicKey.deserialize(fromB64(device.pqPreKey.publicKey)),
    fromB64(device.pqPreKey.signature),
  );
}
