// A small protobuf (proto2) codec, written for these tests so that they do
// not depend on a protobuf library, plus the few messages the message relay
// puts on the wire: Envelope and the WebSocket framing messages.
//
// Wire types handled: 0 (varint), 1 (fixed64), 2 (length-delimited) and 5
// (fixed32). Groups (3, 4) are rejected. Every varint is read as a BigInt,
// because uint64 values (request ids, timestamps) may exceed 2^53; the
// message helpers below turn uint32, enum and bool fields into numbers and
// booleans and keep uint64 fields as BigInt.
//
// Proto2 semantics: a field that is absent decodes to `undefined`, never to a
// default value, so a test can tell "not sent" from "sent as zero". For a
// non-repeated field that occurs more than once, the last occurrence wins.

export const WireType = Object.freeze({ VARINT: 0, FIXED64: 1, LEN: 2, FIXED32: 5 });

const UINT64_MAX = (1n << 64n) - 1n;
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

// --- low level --------------------------------------------------------------

function toUint64(value, what) {
  let v;
  if (typeof value === 'bigint') {
    v = value;
  } else if (typeof value === 'number' && Number.isSafeInteger(value)) {
    v = BigInt(value);
  } else if (typeof value === 'boolean') {
    v = value ? 1n : 0n;
  } else {
    throw new TypeError(`${what}: expected a BigInt or a safe integer, got ${String(value)}`);
  }
  if (v < 0n || v > UINT64_MAX) {
    throw new RangeError(`${what}: ${v} does not fit in an unsigned 64-bit integer`);
  }
  return v;
}

/** The varint encoding of an unsigned 64-bit value (BigInt or safe integer). */
export function encodeVarint(value) {
  let v = toUint64(value, 'varint');
  const out = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}

/**
 * Reads a varint at `offset`. Returns { value: BigInt, next }. Rejects a
 * truncated varint, one longer than 10 bytes, and one above 2^64 - 1.
 */
export function decodeVarint(bytes, offset) {
  let result = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    const at = offset + i;
    if (at >= bytes.length) {
      throw new RangeError(`truncated varint at offset ${offset}`);
    }
    const b = bytes[at];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) {
      if (result > UINT64_MAX) {
        throw new RangeError(`varint at offset ${offset} exceeds 64 bits`);
      }
      return { value: result, next: at + 1 };
    }
    shift += 7n;
  }
  throw new RangeError(`varint at offset ${offset} is longer than 10 bytes`);
}

function concat(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function asBytes(value, what) {
  if (value instanceof Uint8Array) {
    return value;
  }
  if (value instanceof ArrayBuffer) {
    return new Uint8Array(value);
  }
  throw new TypeError(`${what}: expected a Uint8Array, got ${Object.prototype.toString.call(value)}`);
}

/**
 * Builds one message field by field, in the order the calls are made.
 * Methods return `this`; a value of `undefined` or `null` writes nothing (an
 * absent optional field).
 */
export class ProtoWriter {
  #chunks = [];

  #tag(field, wireType) {
    if (!Number.isInteger(field) || field < 1 || field > 0x1fffffff) {
      throw new RangeError(`invalid field number ${field}`);
    }
    this.#chunks.push(encodeVarint((BigInt(field) << 3n) | BigInt(wireType)));
  }

  /** Varint field: uint32, uint64, enum (BigInt or safe integer). */
  uint(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    this.#tag(field, WireType.VARINT);
    this.#chunks.push(encodeVarint(value));
    return this;
  }

  /** A uint32 field: like uint() but rejects values above 2^32 - 1. */
  uint32(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    const v = toUint64(value, `field ${field}`);
    if (v > 0xffffffffn) {
      throw new RangeError(`field ${field}: ${v} does not fit in uint32`);
    }
    return this.uint(field, v);
  }

  bool(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    return this.uint(field, value ? 1n : 0n);
  }

  /** Little-endian 8-byte field (fixed64). */
  fixed64(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    const v = toUint64(value, `field ${field}`);
    this.#tag(field, WireType.FIXED64);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, v, true);
    this.#chunks.push(b);
    return this;
  }

  bytes(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    const b = asBytes(value, `field ${field}`);
    this.#tag(field, WireType.LEN);
    this.#chunks.push(encodeVarint(b.length), b);
    return this;
  }

  string(field, value) {
    if (value === undefined || value === null) {
      return this;
    }
    if (typeof value !== 'string') {
      throw new TypeError(`field ${field}: expected a string`);
    }
    return this.bytes(field, textEncoder.encode(value));
  }

  /** One element per entry of `values` (a repeated field). */
  repeatedString(field, values) {
    for (const v of values ?? []) {
      this.string(field, v);
    }
    return this;
  }

  finish() {
    return concat(this.#chunks);
  }
}

/**
 * Splits a serialized message into its fields, in wire order:
 * [{ field, wireType, value }] where value is a BigInt (varint, fixed64), a
 * number (fixed32) or a Uint8Array view (length-delimited). Throws on
 * truncation, field number 0, and group wire types.
 */
export function decodeFields(bytes) {
  const buf = asBytes(bytes, 'message');
  const fields = [];
  let at = 0;
  while (at < buf.length) {
    const { value: key, next } = decodeVarint(buf, at);
    at = next;
    if (key > 0xffffffffn) {
      throw new RangeError(`field key ${key} out of range`);
    }
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (field === 0) {
      throw new RangeError('field number 0 is invalid');
    }
    switch (wireType) {
      case WireType.VARINT: {
        const v = decodeVarint(buf, at);
        fields.push({ field, wireType, value: v.value });
        at = v.next;
        break;
      }
      case WireType.FIXED64: {
        if (at + 8 > buf.length) {
          throw new RangeError(`truncated fixed64 field ${field}`);
        }
        const value = new DataView(buf.buffer, buf.byteOffset + at, 8).getBigUint64(0, true);
        fields.push({ field, wireType, value });
        at += 8;
        break;
      }
      case WireType.LEN: {
        const len = decodeVarint(buf, at);
        at = len.next;
        if (len.value > BigInt(buf.length - at)) {
          throw new RangeError(`truncated length-delimited field ${field}`);
        }
        const n = Number(len.value);
        fields.push({ field, wireType, value: buf.subarray(at, at + n) });
        at += n;
        break;
      }
      case WireType.FIXED32: {
        if (at + 4 > buf.length) {
          throw new RangeError(`truncated fixed32 field ${field}`);
        }
        const value = new DataView(buf.buffer, buf.byteOffset + at, 4).getUint32(0, true);
        fields.push({ field, wireType, value });
        at += 4;
        break;
      }
      default:
        throw new RangeError(`unsupported wire type ${wireType} for field ${field}`);
    }
  }
  return fields;
}

// --- schema-driven messages ---------------------------------------------------

// Field kinds: how a decoded wire value becomes a JS value, and back.
const KINDS = {
  uint32: { wire: WireType.VARINT, read: (v) => Number(BigInt.asUintN(32, v)), write: (w, f, v) => w.uint32(f, v) },
  uint64: { wire: WireType.VARINT, read: (v) => v, write: (w, f, v) => w.uint(f, v) },
  // An enum is an int32 on the wire: a negative value arrives sign-extended.
  enum: {
    wire: WireType.VARINT,
    read: (v) => Number(BigInt.asIntN(32, BigInt.asUintN(32, v))),
    write: (w, f, v) => w.uint(f, v),
  },
  bool: { wire: WireType.VARINT, read: (v) => v !== 0n, write: (w, f, v) => w.bool(f, v) },
  fixed64: { wire: WireType.FIXED64, read: (v) => v, write: (w, f, v) => w.fixed64(f, v) },
  bytes: { wire: WireType.LEN, read: (v) => new Uint8Array(v), write: (w, f, v) => w.bytes(f, v) },
  string: { wire: WireType.LEN, read: (v) => textDecoder.decode(v), write: (w, f, v) => w.string(f, v) },
};

/**
 * A message type from a schema { name: [fieldNumber, kind, options] } where
 * kind is a key of KINDS or another message type, and options may contain
 * { repeated: true }. Returns { encode(object), decode(bytes) }.
 */
export function messageType(typeName, schema) {
  const byNumber = new Map();
  for (const [name, [number, kind, opts = {}]] of Object.entries(schema)) {
    byNumber.set(number, { name, kind, repeated: opts.repeated === true });
  }
  const type = {
    typeName,
    encode(obj) {
      const w = new ProtoWriter();
      for (const [number, { name, kind, repeated }] of [...byNumber].sort((a, b) => a[0] - b[0])) {
        const value = obj[name];
        if (value === undefined || value === null) {
          continue;
        }
        const values = repeated ? value : [value];
        for (const v of values) {
          if (typeof kind === 'string') {
            KINDS[kind].write(w, number, v);
          } else {
            w.bytes(number, kind.encode(v));
          }
        }
      }
      return w.finish();
    },
    decode(bytes) {
      const out = {};
      const unknown = [];
      for (const { name, repeated } of byNumber.values()) {
        if (repeated) {
          out[name] = [];
        }
      }
      for (const f of decodeFields(bytes)) {
        const spec = byNumber.get(f.field);
        if (spec === undefined) {
          unknown.push(f);
          continue;
        }
        const expectedWire = typeof spec.kind === 'string' ? KINDS[spec.kind].wire : WireType.LEN;
        if (f.wireType !== expectedWire) {
          throw new TypeError(
            `${typeName}.${spec.name} (field ${f.field}): wire type ${f.wireType}, expected ${expectedWire}`,
          );
        }
        const value = typeof spec.kind === 'string' ? KINDS[spec.kind].read(f.value) : spec.kind.decode(f.value);
        if (spec.repeated) {
          out[spec.name].push(value);
        } else {
          out[spec.name] = value;
        }
      }
      // Not enumerable, so deepEqual on decoded messages ignores it.
      Object.defineProperty(out, 'unknownFields', { value: unknown, enumerable: false });
      return out;
    },
  };
  return Object.freeze(type);
}

// --- Signal service messages ----------------------------------------------------

/** Envelope.Type values. */
export const EnvelopeType = Object.freeze({
  UNKNOWN: 0,
  CIPHERTEXT: 1,
  PREKEY_BUNDLE: 3,
  UNIDENTIFIED_SENDER: 6,
  PLAINTEXT_CONTENT: 8,
});

/**
 * Envelope as the server delivers it. uint64 fields (timestamps) are BigInt;
 * service ids and the server guid are raw 16-byte UUIDs.
 */
export const Envelope = messageType('Envelope', {
  type: [1, 'enum'],
  clientTimestamp: [5, 'uint64'],
  sourceDevice: [7, 'uint32'],
  content: [8, 'bytes'],
  serverTimestamp: [10, 'uint64'],
  urgent: [14, 'bool'],
  sourceServiceId: [19, 'bytes'],
  destinationServiceId: [20, 'bytes'],
  serverGuid: [21, 'bytes'],
});

/** WebSocketMessage.Type values. */
export const WebSocketMessageType = Object.freeze({ UNKNOWN: 0, REQUEST: 1, RESPONSE: 2 });

/** A request over the socket; `id` is a BigInt, `headers` are "Name:value" strings. */
export const WebSocketRequestMessage = messageType('WebSocketRequestMessage', {
  verb: [1, 'string'],
  path: [2, 'string'],
  body: [3, 'bytes'],
  id: [4, 'uint64'],
  headers: [5, 'string', { repeated: true }],
});

export const WebSocketResponseMessage = messageType('WebSocketResponseMessage', {
  id: [1, 'uint64'],
  status: [2, 'uint32'],
  message: [3, 'string'],
  body: [4, 'bytes'],
  headers: [5, 'string', { repeated: true }],
});

export const WebSocketMessage = messageType('WebSocketMessage', {
  type: [1, 'enum'],
  request: [2, WebSocketRequestMessage],
  response: [3, WebSocketResponseMessage],
});

// --- UUIDs ------------------------------------------------------------------------

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The 16 bytes of a UUID string (any case). */
export function uuidToBytes(uuid) {
  if (typeof uuid !== 'string' || !UUID_RE.test(uuid)) {
    throw new TypeError(`not a UUID: ${JSON.stringify(uuid)}`);
  }
  return new Uint8Array(Buffer.from(uuid.replaceAll('-', ''), 'hex'));
}

/** The lowercase hyphenated string of 16 UUID bytes. */
export function bytesToUuid(bytes) {
  const b = asBytes(bytes, 'uuid');
  if (b.length !== 16) {
    throw new RangeError(`a UUID has 16 bytes, got ${b.length}`);
  }
  const hex = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
