// The demo's cryptography, all WebCrypto.
//
// Keys the server checks: an account's identity key is a Curve25519 key, and every prekey must carry an
// XEdDSA signature by it. The page makes an Ed25519 key, publishes its Montgomery form u = (1 + y) / (1 − y)
// as the identity key, and signs with Ed25519; XEdDSA verification rebuilds the same Edwards point from u
// and the sign bit, which XEdDSA carries in the top bit of the signature's last byte.
//
// DEMO ENCRYPTION, NOT THE SIGNAL PROTOCOL: signaling messages are sealed with AES-256-GCM under a key from
// X25519 between the caller's fresh key and the owner's signed prekey (HKDF-SHA-256). There is no ratchet,
// no forward secrecy beyond the caller's fresh key, and the owner's identity key is whatever the server said.
// Real clients use libsignal (PQXDH, Double Ratchet, sealed sender), which has no browser build.

const P = 2n ** 255n - 19n;
const INFO = new TextEncoder().encode('sealpost demo signaling v1');

function modPow(base, exponent) {
  let result = 1n;
  let b = base % P;
  for (let e = exponent; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % P;
    b = (b * b) % P;
  }
  return result;
}

const toBigInt = (bytes) => bytes.reduceRight((acc, byte) => (acc << 8n) | BigInt(byte), 0n); // little-endian
function fromBigInt(value) {
  const out = new Uint8Array(32);
  for (let i = 0, v = value; i < 32; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/** The Montgomery u-coordinate (X25519 public key) of a compressed Ed25519 public key. */
export function montgomeryFromEdwards(edwards) {
  const bytes = Uint8Array.from(edwards);
  bytes[31] &= 0x7f;
  const y = toBigInt(bytes);
  const u = ((1n + y) * modPow((1n - y + P) % P, P - 2n)) % P;
  return fromBigInt(u);
}

export const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};
export const random = (n) => crypto.getRandomValues(new Uint8Array(n));

/**
 * Checks an XEdDSA signature by a 33-byte identity key over `message`: the Edwards point with the u-coordinate's
 * y = (u − 1) / (u + 1) and the signature's sign bit, then plain Ed25519 verification.
 */
export async function verifyXeddsa(identityKey33, message, signature) {
  const u = toBigInt(identityKey33.subarray(1));
  const y = (((u - 1n + P) % P) * modPow(u + 1n, P - 2n)) % P;
  const edwards = fromBigInt(y);
  edwards[31] |= signature[63] & 0x80;
  const plain = Uint8Array.from(signature);
  plain[63] &= 0x7f;
  try {
    const key = await crypto.subtle.importKey('raw', edwards, { name: 'Ed25519' }, false, ['verify']);
    return await crypto.subtle.verify({ name: 'Ed25519' }, key, plain, message);
  } catch {
    return false; // not a point on the curve
  }
}

/** An identity: `publicKey` (33 bytes, 0x05 ‖ u) and `sign(bytes)`, an XEdDSA-compatible signature. */
export async function newIdentity() {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign']);
  const edwards = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const signBit = edwards[31] & 0x80;
  return {
    publicKey: concat([0x05], montgomeryFromEdwards(edwards)),
    async sign(message) {
      const signature = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, pair.privateKey, message));
      signature[63] |= signBit;
      return signature;
    },
  };
}

/** An X25519 key pair: `publicKey` (33 bytes, 0x05 ‖ key) and the private CryptoKey. */
export async function newAgreementKey() {
  const pair = await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  return { publicKey: concat([0x05], raw), privateKey: pair.privateKey };
}

/** The AES-GCM key both ends derive from our private key and the other's 33-byte public key. */
export async function sessionKey(privateKey, theirPublic33) {
  const theirs = await crypto.subtle.importKey('raw', theirPublic33.subarray(1), { name: 'X25519' }, false, []);
  const shared = await crypto.subtle.deriveBits({ name: 'X25519', public: theirs }, privateKey, 256);
  const base = await crypto.subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info: INFO },
    base,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/** Seals a JSON value: a fresh 12-byte nonce ‖ AES-GCM ciphertext. */
export async function seal(key, value) {
  const iv = random(12);
  const plaintext = new TextEncoder().encode(JSON.stringify(value));
  return concat(iv, new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, plaintext)));
}

export async function open(key, sealed) {
  const plaintext = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: sealed.subarray(0, 12) }, key, sealed.subarray(12));
  return JSON.parse(new TextDecoder().decode(plaintext));
}
