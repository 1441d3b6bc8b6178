// In-memory implementations of the store interfaces that
// @signalapp/libsignal-client calls back into while it builds sessions and
// encrypts or decrypts messages. One `ClientStores` instance holds everything
// a single device (one identity, one registration id) needs.
//
// The library reads from these stores and writes to them through the abstract
// classes it exports. Each store also keeps a small log of what the library
// did (for example which one-time prekeys it consumed), so tests can assert
// on it.

import {
  Direction,
  IdentityChange,
  IdentityKeyStore,
  KyberPreKeyStore,
  PreKeyStore,
  SessionRecord,
  SessionStore,
  SignedPreKeyStore,
} from '@signalapp/libsignal-client';

/** Key for a ProtocolAddress in a Map: "name.deviceId". */
function addressKey(address) {
  return `${address.name()}.${address.deviceId()}`;
}

export class InMemorySessionStore extends SessionStore {
  #sessions = new Map(); // address key -> serialized SessionRecord

  async saveSession(address, record) {
    this.#sessions.set(addressKey(address), record.serialize());
  }

  async getSession(address) {
    const bytes = this.#sessions.get(addressKey(address));
    return bytes === undefined ? null : SessionRecord.deserialize(bytes);
  }

  async getExistingSessions(addresses) {
    return addresses.map((address) => {
      const bytes = this.#sessions.get(addressKey(address));
      if (bytes === undefined) {
        throw new Error(`no session for ${addressKey(address)}`);
      }
      return SessionRecord.deserialize(bytes);
    });
  }

  hasSession(address) {
    return this.#sessions.has(addressKey(address));
  }
}

export class InMemoryIdentityKeyStore extends IdentityKeyStore {
  #identityKeyPair;
  #registrationId;
  #known = new Map(); // address key -> PublicKey

  /**
   * @param {import('@signalapp/libsignal-client').IdentityKeyPair} identityKeyPair
   * @param {number} registrationId
   */
  constructor(identityKeyPair, registrationId) {
    super();
    this.#identityKeyPair = identityKeyPair;
    this.#registrationId = registrationId;
  }

  async getIdentityKey() {
    return this.#identityKeyPair.privateKey;
  }

  // The base class derives the pair from the private key; returning the pair
  // we hold avoids that round trip and keeps the exact public key object.
  async getIdentityKeyPair() {
    return this.#identityKeyPair;
  }

  async getLocalRegistrationId() {
    return this.#registrationId;
  }

  async saveIdentity(address, key) {
    const k = addressKey(address);
    const existing = this.#known.get(k);
    this.#known.set(k, key);
    if (existing !== undefined && !existing.equals(key)) {
      return IdentityChange.ReplacedExisting;
    }
    return IdentityChange.NewOrUnchanged;
  }

  // Trust on first use, like a real client: an unknown identity is trusted,
  // a known one only if it is unchanged.
  async isTrustedIdentity(address, key, _direction = Direction.Sending) {
    const existing = this.#known.get(addressKey(address));
    return existing === undefined || existing.equals(key);
  }

  async getIdentity(address) {
    return this.#known.get(addressKey(address)) ?? null;
  }
}

export class InMemoryPreKeyStore extends PreKeyStore {
  #records = new Map(); // id -> PreKeyRecord
  /** Ids the library removed after using them, in order. */
  removed = [];

  async savePreKey(id, record) {
    this.#records.set(id, record);
  }

  async getPreKey(id) {
    const record = this.#records.get(id);
    if (record === undefined) {
      throw new Error(`no one-time prekey with id ${id}`);
    }
    return record;
  }

  async removePreKey(id) {
    this.#records.delete(id);
    this.removed.push(id);
  }

  has(id) {
    return this.#records.has(id);
  }
}

export class InMemorySignedPreKeyStore extends SignedPreKeyStore {
  #records = new Map(); // id -> SignedPreKeyRecord

  async saveSignedPreKey(id, record) {
    this.#records.set(id, record);
  }

  async getSignedPreKey(id) {
    const record = this.#records.get(id);
    if (record === undefined) {
      throw new Error(`no signed prekey with id ${id}`);
    }
    return record;
  }
}

export class InMemoryKyberPreKeyStore extends KyberPreKeyStore {
  #records = new Map(); // id -> KyberPreKeyRecord
  #lastResort = new Set(); // ids that are last-resort keys (never removed)
  /** Calls to markKyberPreKeyUsed, in order: { kyberPreKeyId, signedPreKeyId, baseKey }. */
  used = [];

  async saveKyberPreKey(id, record) {
    this.#records.set(id, record);
  }

  /** Saves a last-resort key: it stays usable after markKyberPreKeyUsed. */
  async saveLastResortKyberPreKey(id, record) {
    this.#records.set(id, record);
    this.#lastResort.add(id);
  }

  async getKyberPreKey(id) {
    const record = this.#records.get(id);
    if (record === undefined) {
      throw new Error(`no Kyber prekey with id ${id}`);
    }
    return record;
  }

  async markKyberPreKeyUsed(id, signedPreKeyId, baseKey) {
    this.used.push({ kyberPreKeyId: id, signedPreKeyId, baseKey });
    if (!this.#lastResort.has(id)) {
      this.#records.delete(id);
    }
  }

  has(id) {
    return this.#records.has(id);
  }
}

/** All the stores of one device, ready to pass to the library's functions. */
export class ClientStores {
  /**
   * @param {import('@signalapp/libsignal-client').IdentityKeyPair} identityKeyPair
   * @param {number} registrationId
   */
  constructor(identityKeyPair, registrationId) {
    this.session = new InMemorySessionStore();
    this.identity = new InMemoryIdentityKeyStore(identityKeyPair, registrationId);
    this.preKey = new InMemoryPreKeyStore();
    this.signedPreKey = new InMemorySignedPreKeyStore();
    this.kyberPreKey = new InMemoryKyberPreKeyStore();
  }
}
