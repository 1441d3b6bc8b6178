// The demo page: two roles in one page, chosen by the address.
//
//   /demo/            owner: a throwaway account, a contact token shown as a QR code and a link, waits for calls
//   /demo/#t=<token>  caller: resolves the token, a throwaway account of its own, places the call
//   ?ice=relay        either role: only TURN relay candidates (iceTransportPolicy "relay")
//
// Signaling (offer, answer, reject, busy, hang-up) travels as envelopes through PUT /v1/messages and the
// delivery WebSocket, sealed with the demo encryption of crypto.js. The caller's first offer is a
// sealed-sender envelope authorised by the contact token; everything after it is sent with the sender's own
// device token, since by then each side knows the other's account.

import { ApiError, api, b64, iceServers, newAccount, sendBody, unb64 } from './api.js';
import { Call, localMedia } from './call.js';
import { newAgreementKey, open, seal, sessionKey, verifyXeddsa } from './crypto.js';
import { drawQr } from './qr.js';
import { openDeliverySocket } from './wire.js';

const $ = (id) => document.getElementById(id);
const relayOnly = new URLSearchParams(location.search).get('ice') === 'relay';
const contactToken = new URLSearchParams(location.hash.slice(1)).get('t');
const role = contactToken ? 'caller' : 'owner';

const ENVELOPE_CIPHERTEXT = 1;
const ENVELOPE_SEALED_SENDER = 6;
/** Envelope lifetimes per signaling message, as docs/calls.md recommends. */
const TTL_SECONDS = { offer: 60, answer: 60, reject: 300, busy: 300, hangup: 300 };
const RING_TIMEOUT_MS = 60_000;

let me = null; // our account
let peer = null; // {aci, device: {deviceId, registrationId}, session, key, contactToken?}
let call = null; // the Call while media flows or is being set up
let callId = null;
let pendingOffer = null;
let connectedAt = 0;
let clock = null;
let lastStats = null;

/** What tests and curious people can read (the state and ICE state are on <body>): getStats counters, our account. */
window.sealpostDemo = { role, relayOnly, stats: () => call?.stats ?? lastStats, aci: () => me?.aci };

function show(state, text) {
  document.body.dataset.state = state;
  $('status').textContent = text;
  $('owner').hidden = role !== 'owner' || state === 'starting' || state === 'error';
  $('incoming').hidden = state !== 'incoming';
  $('dial').hidden = role !== 'caller' || !['ready', 'ended'].includes(state);
  $('media').hidden = !['connecting', 'ringing', 'in-call'].includes(state);
  $('error').hidden = state !== 'error';
}

function fail(err) {
  console.error(err);
  $('error').textContent = describe(err);
  show('error', role === 'owner' ? 'The demo could not start.' : 'The call is not possible.');
}

/** An error in words. */
function describe(err) {
  if (err instanceof ApiError) {
    if (err.code === 'rate_limited') {
      const wait = err.retryAfter === 1 ? '1 second' : `${err.retryAfter ?? 'a few'} seconds`;
      return `Too many attempts from this address: try again in ${wait}.`;
    }
    if (err.code === 'unavailable') return 'The server cannot reach its storage right now; try again shortly.';
    return `The server refused the request: ${err.message} (${err.code}).`;
  }
  return err.message;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Seals a signaling message of the current call (or of `to` and `id`) and sends it to that device. */
async function send(type, extra = {}, to = peer, id = callId) {
  const from = { aci: me.aci, deviceId: me.deviceId, registrationId: me.registrationId };
  const box = await seal(to.key, { type, callId: id, from, ...extra });
  const content = encoder.encode(JSON.stringify({ session: to.session, box: b64(box) }));
  const path = `/v1/messages/${to.aci}`;
  if (type === 'offer' && to.contactToken) {
    const json = sendBody(to.device, ENVELOPE_SEALED_SENDER, content, TTL_SECONDS[type]);
    await api('PUT', path, { json, headers: { 'contact-token': to.contactToken } });
  } else {
    await me.call('PUT', path, { json: sendBody(to.device, ENVELOPE_CIPHERTEXT, content, TTL_SECONDS[type]) });
  }
}

/** "m:ss" of a duration in seconds. */
const minutes = (seconds) => `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;

function startCall(stream, servers) {
  const view = { remote: $('remote'), local: $('local'), meter: $('meter') };
  call = new Call({ iceServers: servers, relayOnly, stream, view, onIce });
}

function onIce(state) {
  document.body.dataset.ice = state;
  $('ice').textContent = `ICE: ${state}${relayOnly ? ' (relay only)' : ''}`;
  if ((state === 'connected' || state === 'completed') && document.body.dataset.state !== 'in-call') {
    connectedAt = Date.now();
    show('in-call', 'In call 0:00');
    clock = setInterval(() => {
      const seconds = Math.floor((Date.now() - connectedAt) / 1000);
      $('status').textContent = `In call ${minutes(seconds)}`;
    }, 1000);
  } else if (state === 'failed') {
    send('hangup').catch(() => {});
    end('The connection failed: the two browsers found no route to each other (is a TURN relay configured?).');
  }
}

function end(text) {
  if (call) {
    lastStats = { ...call.stats };
    call.close();
  }
  call = null;
  callId = null;
  pendingOffer = null;
  clearInterval(clock);
  const seconds = connectedAt ? Math.floor((Date.now() - connectedAt) / 1000) : null;
  connectedAt = 0;
  show('ended', seconds === null ? text : `${text} (${minutes(seconds)})`);
}

async function hangUp() {
  const wasRinging = document.body.dataset.state === 'ringing';
  await send('hangup').catch(() => {});
  end(wasRinging ? 'Call cancelled.' : 'Call ended.');
}

// --- owner ---------------------------------------------------------------------------------------------

async function startOwner() {
  show('starting', 'Creating a throwaway account…');
  me = await newAccount();
  const sessions = new Map(); // a caller's session key by its public key
  await openDeliverySocket(me.token, async ({ content }) => {
    const outer = JSON.parse(decoder.decode(content));
    if (!sessions.has(outer.session)) {
      sessions.set(outer.session, await sessionKey(me.agreementKey.privateKey, unb64(outer.session)));
    }
    const key = sessions.get(outer.session);
    ownerReceives(await open(key, unb64(outer.box)), outer.session, key);
  }, lostSocket);
  const created = await me.call('POST', '/v1/contact-tokens', { json: { ttlSeconds: 3600 } });
  const link = `${location.origin}${location.pathname}${location.search}#t=${created.token}`;
  drawQr($('qr'), link);
  $('link').href = link;
  $('link').textContent = link;
  $('revoke').addEventListener('click', async () => {
    await me.call('DELETE', `/v1/contact-tokens/${created.id}`);
    $('revoke').disabled = true;
    $('revoked').hidden = false;
  });
  show('waiting', 'Waiting for a call. Scan the code or open the link in another browser.');
}

function ownerReceives(message, session, key) {
  const sender = { aci: message.from.aci, device: { deviceId: message.from.deviceId, registrationId: message.from.registrationId }, session, key };
  if (message.type === 'offer') {
    if (message.callId === callId) return; // a duplicate: a send retried after a 503 can arrive twice
    if (callId !== null) {
      send('busy', {}, sender, message.callId).catch((err) => console.warn('busy not sent', err));
      return;
    }
    peer = sender;
    callId = message.callId;
    pendingOffer = message.sdp;
    show('incoming', 'Incoming call…');
  } else if (message.type === 'hangup' && message.callId === callId) {
    end(pendingOffer && !call ? 'Missed call: the caller hung up.' : 'The caller hung up.');
  }
}

async function accept() {
  show('connecting', 'Connecting…');
  try {
    const stream = await localMedia();
    startCall(stream, await iceServers(me));
    const offer = pendingOffer;
    pendingOffer = null;
    await send('answer', { sdp: await call.answer(offer) });
  } catch (err) {
    await send('hangup').catch(() => {});
    end(describe(err));
  }
}

async function reject() {
  await send('reject').catch(() => {});
  end('Call rejected.');
}

// --- caller --------------------------------------------------------------------------------------------

async function startCaller() {
  show('starting', 'Looking up the contact…');
  let contact;
  try {
    contact = await api('GET', `/v1/contact/${encodeURIComponent(contactToken)}`);
  } catch (err) {
    if (err.code === 'not_found') {
      throw new Error('This contact link no longer works: it was revoked, it expired, or it was used up. Ask its owner for a new QR code.');
    }
    throw err;
  }
  show('starting', 'Creating a throwaway account…');
  me = await newAccount();
  const bundle = await api('GET', `/v1/keys/${contact.aci}/1`, { headers: { 'contact-token': contactToken } });
  if (bundle.identityKey !== contact.identityKey) throw new Error("The contact's identity key changed on the way.");
  const device = bundle.devices[0];
  const signed = device.signedPreKey;
  if (!(await verifyXeddsa(unb64(contact.identityKey), unb64(signed.publicKey), unb64(signed.signature)))) {
    throw new Error("The contact's key is not signed by its identity: refusing to call.");
  }
  const ours = await newAgreementKey();
  peer = {
    aci: contact.aci,
    device: { deviceId: device.deviceId, registrationId: device.registrationId },
    session: b64(ours.publicKey),
    key: await sessionKey(ours.privateKey, unb64(signed.publicKey)),
    contactToken,
  };
  await openDeliverySocket(me.token, async ({ content }) => {
    const outer = JSON.parse(decoder.decode(content));
    if (outer.session === peer.session) callerReceives(await open(peer.key, unb64(outer.box)));
  }, lostSocket);
  show('ready', 'Ready: press Call.');
}

async function placeCall() {
  callId = b64(crypto.getRandomValues(new Uint8Array(8)));
  show('connecting', 'Opening the camera…');
  try {
    const stream = await localMedia();
    startCall(stream, await iceServers(me));
    const sdp = await call.offer();
    await send('offer', { sdp });
    show('ringing', 'Ringing…');
    const ringing = callId;
    setTimeout(() => {
      if (callId === ringing && document.body.dataset.state === 'ringing') hangUp().then(() => show('ended', 'No answer.'));
    }, RING_TIMEOUT_MS);
  } catch (err) {
    end(describe(err));
  }
}

async function callerReceives(message) {
  if (message.callId !== callId || !call) return;
  if (message.type === 'answer') {
    if (call.pc.signalingState !== 'have-local-offer') return; // a duplicate of the answer we already have
    show('connecting', 'Connecting…');
    await call.accept(message.sdp).catch((err) => hangUp().then(() => show('ended', describe(err))));
  } else if (message.type === 'reject') {
    end('The call was declined.');
  } else if (message.type === 'busy') {
    end('Busy: they are in another call.');
  } else if (message.type === 'hangup') {
    end('They hung up.');
  }
}

function lostSocket() {
  if (call) end('Lost the connection to the server.');
  fail(new Error('Lost the connection to the server; reload the page to start again.'));
}

// --- start ---------------------------------------------------------------------------------------------

$('accept').addEventListener('click', accept);
$('reject').addEventListener('click', reject);
$('call').addEventListener('click', placeCall);
$('hangup').addEventListener('click', hangUp);
$('role').textContent = role === 'owner' ? 'You are the owner: others call you through your QR code.' : 'You are calling the owner of a QR code.';
(role === 'owner' ? startOwner() : startCaller()).catch(fail);
