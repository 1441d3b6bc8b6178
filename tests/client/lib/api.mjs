// Thin helpers over fetch for the sealpost HTTP API. Every call returns the
// status and the parsed body, whatever the status: tests decide what is an
// error. All binary values travel as standard base64 with padding.

/** Standard base64 (with padding) of bytes. */
export function b64(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/**
 * Bytes from standard base64, as a Uint8Array over its own ArrayBuffer (the
 * library's bindings expect Uint8Array<ArrayBuffer>, and Node's Buffers can
 * be views into a shared pool).
 */
export function fromB64(text) {
  if (typeof text !== 'string') {
    throw new TypeError(`expected a base64 string, got ${JSON.stringify(text)}`);
  }
  return new Uint8Array(Buffer.from(text, 'base64'));
}

/** Value of an `Authorization: Basic` header for a device. */
export function basicAuth(aci, deviceId, deviceSecret) {
  const secret = typeof deviceSecret === 'string' ? deviceSecret : b64(deviceSecret);
  return `Basic ${Buffer.from(`${aci}.${deviceId}:${secret}`, 'utf8').toString('base64')}`;
}

/** Value of an `Authorization: Bearer` header. */
export function bearer(token) {
  return `Bearer ${token}`;
}

/**
 * One HTTP request. `auth` is one of:
 *   { token }                         -> Authorization: Bearer
 *   { basic: [aci, deviceId, secret] } -> Authorization: Basic
 *   { unidentifiedAccessKey: bytes }   -> Unidentified-Access-Key: base64
 *   undefined                         -> no credentials
 * Returns { status, headers, body, text } where body is the parsed JSON or
 * null when the response is not JSON.
 */
export async function request(baseUrl, method, path, { json, auth, headers = {} } = {}) {
  const h = { ...headers };
  if (auth?.token !== undefined) {
    h.authorization = bearer(auth.token);
  } else if (auth?.basic !== undefined) {
    h.authorization = basicAuth(...auth.basic);
  } else if (auth?.unidentifiedAccessKey !== undefined) {
    h['unidentified-access-key'] = b64(auth.unidentifiedAccessKey);
  }
  let payload;
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const res = await fetch(new URL(path, baseUrl), { method, headers: h, body: payload });
  const text = await res.text();
  let body = null;
  if ((res.headers.get('content-type') ?? '').includes('json') || /^\s*[[{]/.test(text)) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  return { status: res.status, headers: res.headers, body, text };
}

/**
 * Throws a readable error unless the response status is `expected` (a number,
 * or 'success' for any 2xx). Returns the parsed body.
 */
export function expectStatus(res, expected, what = 'request') {
  const ok = expected === 'success' ? res.status >= 200 && res.status < 300 : res.status === expected;
  if (!ok) {
    throw new Error(`${what}: expected HTTP ${expected}, got ${res.status}: ${res.text.slice(0, 2000)}`);
  }
  return res.body;
}

// --- endpoints --------------------------------------------------------------

/** POST /v1/accounts. `body` is { identityKey, registrationId, deviceSecret } (base64 strings). */
export function createAccount(baseUrl, body) {
  return request(baseUrl, 'POST', '/v1/accounts', { json: body });
}

/** POST /v1/auth/token with Basic credentials of the device. */
export function issueToken(baseUrl, aci, deviceId, deviceSecret) {
  return request(baseUrl, 'POST', '/v1/auth/token', { auth: { basic: [aci, deviceId, deviceSecret] } });
}

/** GET /v1/devices. */
export function listDevices(baseUrl, token) {
  return request(baseUrl, 'GET', '/v1/devices', { auth: { token } });
}

/** PUT /v1/keys. */
export function uploadKeys(baseUrl, token, body) {
  return request(baseUrl, 'PUT', '/v1/keys', { json: body, auth: { token } });
}

/** GET /v1/keys/count. */
export function keyCount(baseUrl, token) {
  return request(baseUrl, 'GET', '/v1/keys/count', { auth: { token } });
}

/** GET /v1/keys/{aci}/{deviceId}; `auth` as for request(). */
export function fetchPreKeys(baseUrl, aci, deviceId, auth) {
  return request(baseUrl, 'GET', `/v1/keys/${encodeURIComponent(aci)}/${encodeURIComponent(deviceId)}`, { auth });
}

/** PUT /v1/accounts/me/attributes. */
export function setAttributes(baseUrl, token, attributes) {
  return request(baseUrl, 'PUT', '/v1/accounts/me/attributes', { json: attributes, auth: { token } });
}

/**
 * Registers an account (body as for createAccount) and gets a token for its
 * first device with `deviceSecret` (bytes). Returns { aci, deviceId, token, expiresIn }.
 */
export async function registerAndLogin(baseUrl, body, deviceSecret) {
  const created = expectStatus(await createAccount(baseUrl, body), 201, 'POST /v1/accounts');
  const issued = expectStatus(
    await issueToken(baseUrl, created.aci, created.deviceId, deviceSecret),
    200,
    'POST /v1/auth/token',
  );
  return { aci: created.aci, deviceId: created.deviceId, token: issued.token, expiresIn: issued.expiresIn };
}
