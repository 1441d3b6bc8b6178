// The delivery WebSocket (GET /v1/websocket), in the protobuf framing of proto/sealpost.proto: the server
// pushes each queued envelope as a request `PUT /api/v1/message` and the page acknowledges it with a
// response of the same id (any 2xx deletes it from the queue). Only the few fields the demo needs are
// encoded and decoded; request ids are full 64-bit values, so they stay BigInts.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function varint(value) {
  let v = BigInt(value);
  const out = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

/** Encodes fields given as [number, kind, value]; kind is 'varint' or 'bytes' (a Uint8Array or a string). */
function encode(fields) {
  const out = [];
  for (const [field, kind, value] of fields) {
    if (value === undefined) continue;
    if (kind === 'varint') {
      out.push(...varint((field << 3) | 0), ...varint(value));
    } else {
      const bytes = typeof value === 'string' ? utf8.encode(value) : value;
      out.push(...varint((field << 3) | 2), ...varint(bytes.length), ...bytes);
    }
  }
  return new Uint8Array(out);
}

/** Decodes a message into {field: [values…]}: varints as BigInt, length-delimited fields as bytes. */
function decode(bytes) {
  const fields = {};
  let at = 0;
  const readVarint = () => {
    let value = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (at >= bytes.length || shift > 63n) throw new Error('bad varint');
      const b = bytes[at++];
      value |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return value;
    }
  };
  while (at < bytes.length) {
    const tag = readVarint();
    const field = Number(tag >> 3n);
    const wireType = Number(tag & 7n);
    let value;
    if (wireType === 0) {
      value = readVarint();
    } else if (wireType === 2) {
      const length = Number(readVarint());
      value = bytes.subarray(at, at + length);
      at += length;
    } else if (wireType === 1 || wireType === 5) {
      at += wireType === 1 ? 8 : 4;
      continue;
    } else {
      throw new Error(`unsupported wire type ${wireType}`);
    }
    (fields[field] ??= []).push(value);
  }
  return fields;
}

const last = (fields, n) => fields[n]?.[fields[n].length - 1];

/**
 * Opens the socket with the device token and calls `onEnvelope({type, content, serverTimestamp})` for each
 * envelope; the envelope is acknowledged once the returned promise settles without error (a failure
 * leaves it queued). Resolves with a handle once connected: {close()}.
 */
export function openDeliverySocket(token, onEnvelope, onClose) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/v1/websocket?token=${encodeURIComponent(token)}`);
  socket.binaryType = 'arraybuffer';
  let keepalive = null;
  let nextId = 1n;
  const respond = (id, status) =>
    socket.send(encode([[1, 'varint', 2], [3, 'bytes', encode([[1, 'varint', id], [2, 'varint', status], [3, 'bytes', 'OK']])]]));

  socket.addEventListener('message', async (event) => {
    const message = decode(new Uint8Array(event.data));
    if (last(message, 1) !== 1n || !message[2]) return; // a response to our keepalive
    const request = decode(last(message, 2));
    const path = fromUtf8.decode(last(request, 2) ?? new Uint8Array());
    const id = last(request, 4);
    if (path === '/api/v1/message') {
      const envelope = decode(last(request, 3) ?? new Uint8Array());
      try {
        await onEnvelope({
          type: Number(last(envelope, 1) ?? 0n),
          content: last(envelope, 8) ?? new Uint8Array(),
          serverTimestamp: Number(last(envelope, 10) ?? 0n),
        });
        respond(id, 200);
      } catch (err) {
        console.warn('envelope not processed', err);
        respond(id, 500);
      }
    } else {
      respond(id, 200); // PUT /api/v1/queue/empty
    }
  });

  return new Promise((resolve, reject) => {
    socket.addEventListener('open', () => {
      keepalive = setInterval(() => {
        const request = encode([[1, 'bytes', 'GET'], [2, 'bytes', '/v1/keepalive'], [4, 'varint', nextId++]]);
        socket.send(encode([[1, 'varint', 1], [2, 'bytes', request]]));
      }, 30_000);
      resolve({ close: () => socket.close(1000) });
    });
    socket.addEventListener('close', (event) => {
      clearInterval(keepalive);
      reject(new Error(`the message socket closed (${event.code})`));
      onClose?.(event);
    });
  });
}
