// HTTP helpers for the message relay and sealed-sender certificates, on top
// of request() from api.mjs, and the mapping from the library's ciphertext
// types to the message types the server speaks.

import { CiphertextMessageType } from '@signalapp/libsignal-client';

import { b64, request } from './api.mjs';
import { EnvelopeType } from './proto.mjs';

/**
 * The `type` of a message in PUT /v1/messages (the Envelope.Type the
 * recipient will see) for a CiphertextMessage from the library.
 */
export function envelopeTypeFor(ciphertext) {
  switch (ciphertext.type()) {
    case CiphertextMessageType.PreKey:
      return EnvelopeType.PREKEY_BUNDLE;
    case CiphertextMessageType.Whisper:
      return EnvelopeType.CIPHERTEXT;
    case CiphertextMessageType.Plaintext:
      return EnvelopeType.PLAINTEXT_CONTENT;
    default:
      throw new Error(`no envelope type for ciphertext type ${ciphertext.type()}`);
  }
}

/**
 * One element of `messages` in PUT /v1/messages. `content` is bytes.
 */
export function outgoingMessage({ type, destinationDeviceId = 1, destinationRegistrationId, content }) {
  return { type, destinationDeviceId, destinationRegistrationId, content: b64(content) };
}

/**
 * PUT /v1/messages/{destinationAci}. `body` is the JSON body
 * ({ messages, timestamp, online?, urgent? }); `auth` as for request():
 * { token } for an identified sender, { unidentifiedAccessKey } for sealed
 * sender, undefined for none.
 */
export function sendMessages(baseUrl, destinationAci, body, auth) {
  return request(baseUrl, 'PUT', `/v1/messages/${encodeURIComponent(destinationAci)}`, { json: body, auth });
}

/** GET /v1/messages: the caller's queued messages, for a client without a socket. */
export function fetchMessages(baseUrl, token) {
  return request(baseUrl, 'GET', '/v1/messages', { auth: { token } });
}

/** DELETE /v1/messages/uuid/{guid}: acknowledges one message fetched over HTTP. */
export function deleteMessage(baseUrl, token, guid) {
  return request(baseUrl, 'DELETE', `/v1/messages/uuid/${encodeURIComponent(guid)}`, { auth: { token } });
}

/** GET /v1/certificate/delivery: a SenderCertificate for the calling device. */
export function deliveryCertificate(baseUrl, token) {
  return request(baseUrl, 'GET', '/v1/certificate/delivery', { auth: { token } });
}

/** GET /v1/certificate/trust-root: the public key that signs server certificates (no auth). */
export function trustRoot(baseUrl) {
  return request(baseUrl, 'GET', '/v1/certificate/trust-root');
}

/**
 * Calls `fn` until `done(result)` holds or `timeoutMs` passes; returns the
 * last result either way (the caller asserts on it).
 */
export async function pollUntil(fn, done, { timeoutMs = 5_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let result = await fn();
  while (!done(result) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, intervalMs));
    result = await fn();
  }
  return result;
}
