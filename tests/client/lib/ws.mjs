// A client for the server's authenticated WebSocket (GET /v1/websocket), as a
// Signal-style app uses it: binary frames, each one a WebSocketMessage that
// carries either a request or a response.
//
// The server pushes each queued envelope as REQUEST PUT /api/v1/message (body:
// a serialized Envelope) and, once the backlog is sent, REQUEST PUT
// /api/v1/queue/empty; the client answers each with a RESPONSE of the same id.
// The client can send requests of its own (GET /v1/keepalive) and waits for
// the RESPONSE with its id.
//
// Node 20 has no global WebSocket without flags, so this uses the `ws`
// package (pinned in package.json).

import WebSocket from 'ws';

import {
  Envelope,
  WebSocketMessage,
  WebSocketMessageType,
} from './proto.mjs';

export const MESSAGE_PATH = '/api/v1/message';
export const QUEUE_EMPTY_PATH = '/api/v1/queue/empty';
export const DEFAULT_TIMEOUT_MS = 10_000;

/** Value of header `name` (case-insensitive) in "Name:value" strings, or undefined. */
export function headerValue(headers, name) {
  const wanted = name.toLowerCase();
  for (const h of headers ?? []) {
    const colon = h.indexOf(':');
    if (colon > 0 && h.slice(0, colon).trim().toLowerCase() === wanted) {
      return h.slice(colon + 1).trim();
    }
  }
  return undefined;
}

/** ws:// URL of the socket endpoint for an http:// base URL. */
export function websocketUrl(baseUrl, token, { tokenInQuery = false } = {}) {
  const url = new URL('/v1/websocket', baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (tokenInQuery) {
    url.searchParams.set('token', token);
  }
  return url;
}

function describeRequest(r) {
  return `${r.verb} ${r.path} (id ${r.id})`;
}

/** A random request id above 2^53, so that ids only survive as 64-bit integers. */
export function bigRequestId() {
  const high = BigInt(Math.floor(Math.random() * 0x7fffffff) + 1) << 33n;
  return (1n << 63n) | high | BigInt(Math.floor(Math.random() * 0xffffffff));
}

export class ServiceSocket {
  #ws;
  #label;
  #incoming = []; // requests from the server not yet taken by a waiter
  #waiters = []; // { resolve, reject, timer } waiting for the next request
  #pending = new Map(); // request id (string) -> { resolve, reject, timer }
  #failure = null; // a protocol error: every later wait rejects with it
  #closeInfo = null;
  #closed;
  #nextId = 1n;

  /** Every request the server sent, in order: { verb, path, id, headers, body }. */
  seenRequests = [];

  constructor(ws, label) {
    this.#ws = ws;
    this.#label = label;
    this.#closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.#closeInfo = { code, reason: reason.toString('utf8') };
        const why = `code ${code}, reason ${JSON.stringify(this.#closeInfo.reason)}`;
        const err = new Error(`${this.#label}: socket closed (${why})`);
        for (const w of this.#waiters.splice(0)) {
          clearTimeout(w.timer);
          w.reject(err);
        }
        for (const p of this.#pending.values()) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        this.#pending.clear();
        resolve(this.#closeInfo);
      });
    });
    ws.on('error', (err) => this.#fail(new Error(`${this.#label}: socket error: ${err.message}`)));
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
  }

  /**
   * Opens GET /v1/websocket with `Authorization: Bearer <token>` (or, with
   * tokenInQuery, `?token=`). Resolves once the upgrade succeeded; rejects
   * with the HTTP status and body if the server refused it.
   */
  static connect(baseUrl, token, { tokenInQuery = false, timeoutMs = DEFAULT_TIMEOUT_MS, label = 'socket' } = {}) {
    const url = websocketUrl(baseUrl, token, { tokenInQuery });
    const headers = tokenInQuery ? {} : { authorization: `Bearer ${token}` };
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers, handshakeTimeout: timeoutMs, perMessageDeflate: false });
      const socket = new ServiceSocket(ws, label);
      let settled = false;
      ws.once('open', () => {
        settled = true;
        resolve(socket);
      });
      ws.once('unexpected-response', (_req, res) => {
        // The upgrade was refused with a plain HTTP answer: report its status
        // and body, then drop the connection (which ws reports as an error,
        // ignored here because the promise is already settled).
        settled = true;
        let body = '';
        const finish = () => {
          const err = new Error(`${label}: GET /v1/websocket answered HTTP ${res.statusCode}: ${body.slice(0, 500)}`);
          err.status = res.statusCode;
          reject(err);
          ws.terminate();
        };
        res.setEncoding('utf8');
        res.on('data', (c) => {
          body += c;
        });
        res.once('end', finish);
        res.once('error', finish);
      });
      ws.once('error', (err) => {
        if (!settled) {
          settled = true;
          reject(new Error(`${label}: could not open ${url.origin}/v1/websocket: ${err.message}`));
        }
      });
    });
  }

  get label() {
    return this.#label;
  }

  /** Resolves with { code, reason } once the socket is closed. */
  get closed() {
    return this.#closed;
  }

  /** { code, reason } once closed, null while open. */
  get closeInfo() {
    return this.#closeInfo;
  }

  #fail(err) {
    this.#failure ??= err;
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.#failure);
    }
  }

  #onMessage(data, isBinary) {
    if (!isBinary) {
      this.#fail(new Error(`${this.#label}: server sent a text frame; the protocol uses binary frames only`));
      return;
    }
    let msg;
    try {
      msg = WebSocketMessage.decode(new Uint8Array(data));
    } catch (err) {
      this.#fail(new Error(`${this.#label}: undecodable WebSocketMessage: ${err.message}`));
      return;
    }
    if (msg.type === WebSocketMessageType.REQUEST && msg.request !== undefined) {
      const r = msg.request;
      const request = {
        verb: r.verb,
        path: r.path,
        id: r.id,
        headers: r.headers,
        body: r.body,
      };
      this.seenRequests.push(request);
      const waiter = this.#waiters.shift();
      if (waiter !== undefined) {
        clearTimeout(waiter.timer);
        waiter.resolve(request);
      } else {
        this.#incoming.push(request);
      }
    } else if (msg.type === WebSocketMessageType.RESPONSE && msg.response !== undefined) {
      const key = String(msg.response.id);
      const pending = this.#pending.get(key);
      if (pending === undefined) {
        this.#fail(new Error(`${this.#label}: RESPONSE for unknown request id ${msg.response.id}`));
        return;
      }
      this.#pending.delete(key);
      clearTimeout(pending.timer);
      pending.resolve(msg.response);
    } else {
      this.#fail(new Error(`${this.#label}: WebSocketMessage of type ${msg.type} without a matching request/response`));
    }
  }

  #send(message) {
    const bytes = WebSocketMessage.encode(message);
    return new Promise((resolve, reject) => {
      this.#ws.send(bytes, { binary: true }, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** The next request the server sent (already received or still to come). */
  nextRequest({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    if (this.#incoming.length > 0) {
      return Promise.resolve(this.#incoming.shift());
    }
    if (this.#failure !== null) {
      return Promise.reject(this.#failure);
    }
    if (this.#closeInfo !== null) {
      const { code } = this.#closeInfo;
      return Promise.reject(new Error(`${this.#label}: socket closed (code ${code}) with no further request`));
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) {
          this.#waiters.splice(i, 1);
        }
        const seen = this.seenRequests.map(describeRequest).join(', ') || 'none';
        reject(new Error(`${this.#label}: no request from the server within ${timeoutMs} ms (seen so far: ${seen})`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** Whether a request from the server is waiting to be taken. */
  get hasQueuedRequest() {
    return this.#incoming.length > 0;
  }

  /** Answers a server request with a RESPONSE of the same id. */
  respond(id, status = 200, message = status >= 200 && status < 300 ? 'OK' : 'Error') {
    return this.#send({
      type: WebSocketMessageType.RESPONSE,
      response: { id, status, message, headers: [] },
    });
  }

  /**
   * Sends a request of our own and resolves with the server's RESPONSE
   * ({ id, status, message, body, headers }). `id` defaults to a counter.
   */
  request(verb, path, { id, body, headers = [], timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const requestId = id ?? this.#nextId++;
    const key = String(requestId);
    const response = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(key);
        reject(new Error(`${this.#label}: no RESPONSE to ${verb} ${path} (id ${requestId}) within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(key, { resolve, reject, timer });
    });
    return this.#send({
      type: WebSocketMessageType.REQUEST,
      request: { verb, path, id: requestId, body, headers },
    }).then(() => response);
  }

  /**
   * The next envelope the server pushes: { request, envelope, timestampHeader }.
   * A queue-empty request met on the way is acknowledged (200) and skipped;
   * any other request is a protocol error. The envelope is NOT acknowledged:
   * the caller answers `request.id`.
   */
  async nextEnvelope({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const request = await this.nextRequest({ timeoutMs: Math.max(1, deadline - Date.now()) });
      if (request.verb === 'PUT' && request.path === QUEUE_EMPTY_PATH) {
        await this.respond(request.id, 200);
        continue;
      }
      return this.#asEnvelope(request);
    }
  }

  /**
   * Reads requests up to and including PUT /api/v1/queue/empty, which it
   * acknowledges. Returns the envelopes met before it (not acknowledged).
   */
  async drainUntilQueueEmpty({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + timeoutMs;
    const envelopes = [];
    for (;;) {
      const request = await this.nextRequest({ timeoutMs: Math.max(1, deadline - Date.now()) });
      if (request.verb === 'PUT' && request.path === QUEUE_EMPTY_PATH) {
        await this.respond(request.id, 200);
        return envelopes;
      }
      envelopes.push(this.#asEnvelope(request));
    }
  }

  #asEnvelope(request) {
    if (request.verb !== 'PUT' || request.path !== MESSAGE_PATH) {
      throw new Error(
        `${this.#label}: expected PUT ${MESSAGE_PATH} or PUT ${QUEUE_EMPTY_PATH}, got ${describeRequest(request)}`,
      );
    }
    if (request.id === undefined) {
      throw new Error(`${this.#label}: PUT ${MESSAGE_PATH} without an id cannot be acknowledged`);
    }
    if (request.body === undefined) {
      throw new Error(`${this.#label}: PUT ${MESSAGE_PATH} (id ${request.id}) has no body`);
    }
    return {
      request,
      envelope: Envelope.decode(request.body),
      timestampHeader: headerValue(request.headers, 'X-Signal-Timestamp'),
    };
  }

  /** Closes the socket (code 1000 unless given) and waits until it is closed. */
  async close(code = 1000, reason = '') {
    if (this.#closeInfo === null) {
      this.#ws.close(code, reason);
      const timer = setTimeout(() => this.#ws.terminate(), 5_000);
      await this.#closed;
      clearTimeout(timer);
    }
    return this.#closeInfo;
  }

  /** Drops the connection without a close handshake. */
  terminate() {
    this.#ws.terminate();
  }
}
