// The sealpost HTTP API as the demo uses it: anonymous accounts with their keys, contact tokens, bundles,
// sends and TURN credentials. Every error answer is JSON {code, message}; it becomes an ApiError.

import { concat, newAgreementKey, newIdentity, random } from './crypto.js';

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.code ?? 'http_error';
    this.retryAfter = retryAfter;
  }
}

export const b64 = (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));
export const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

/** One request; resolves with the parsed JSON body (null for 204), throws ApiError for any other status. */
export async function api(method, path, { json, token, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (json !== undefined) h['content-type'] = 'application/json';
  const response = await fetch(path, { method, headers: h, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) throw new ApiError(response.status, body, Number(response.headers.get('retry-after')) || undefined);
  return body;
}

/**
 * Registers an anonymous account with one device and publishes its keys: a signed X25519 prekey (the key
 * the demo encryption agrees on) and a last-resort Kyber key. The page never uses the Kyber key, so it is a
 * placeholder of the right form (type byte 0x08 and 1568 random bytes, signed): the server checks only the
 * form and the signature of a Kyber key.
 */
export async function newAccount() {
  const identity = await newIdentity();
  const registrationId = 1 + (crypto.getRandomValues(new Uint16Array(1))[0] % 16380);
  const secret = random(32);
  const created = await api('POST', '/v1/accounts', {
    json: { identityKey: b64(identity.publicKey), registrationId, deviceSecret: b64(secret) },
  });
  const account = {
    aci: created.aci,
    deviceId: created.deviceId,
    registrationId,
    token: null,
    agreementKey: await newAgreementKey(),
    /** A device token, fetched again when the old one is refused (tokens live 15 minutes). */
    async refreshToken() {
      const basic = btoa(`${this.aci}.${this.deviceId}:${b64(secret)}`);
      this.token = (await api('POST', '/v1/auth/token', { headers: { authorization: `Basic ${basic}` } })).token;
      return this.token;
    },
    /** An authenticated request, retried once with a fresh token after a 401. */
    async call(method, path, options = {}) {
      try {
        return await api(method, path, { ...options, token: this.token });
      } catch (err) {
        if (err.status !== 401) throw err;
        return api(method, path, { ...options, token: await this.refreshToken() });
      }
    },
  };
  await account.refreshToken();
  const kyber = concat([0x08], random(1568));
  await account.call('PUT', '/v1/keys', {
    json: {
      signedPreKey: { keyId: 1, publicKey: b64(account.agreementKey.publicKey), signature: b64(await identity.sign(account.agreementKey.publicKey)) },
      pqLastResortPreKey: { keyId: 1, publicKey: b64(kyber), signature: b64(await identity.sign(kyber)) },
    },
  });
  return account;
}

/** The envelope send of PUT /v1/messages/{aci} to one device, as calls.md recommends for signaling. */
export function sendBody(device, type, content, ttlSeconds) {
  return {
    messages: [{ type, destinationDeviceId: device.deviceId, destinationRegistrationId: device.registrationId, content: b64(content) }],
    timestamp: Date.now(),
    urgent: true,
    ttlSeconds,
  };
}

/** ICE servers for RTCPeerConnection from GET /v1/calling/relays. */
export async function iceServers(account) {
  const { relays } = await account.call('GET', '/v1/calling/relays');
  return relays.map((r) => ({ urls: r.urls, username: r.username, credential: r.password }));
}
