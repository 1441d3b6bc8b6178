//! The server's own keys, kept as files in the data directory (mode 0600), created by `sealpost keygen` or
//! on the first `serve`:
//!
//! | file | what |
//! | --- | --- |
//! | `jwt_ed25519.pem` | Ed25519 key signing device access tokens (PKCS#8 PEM) |
//! | `trust_root.key` | Curve25519 sealed-sender trust root (base64 private key); clients pin its public key |
//! | `server_cert.key` | Curve25519 key of the server certificate that signs sender certificates |
//! | `vapid_p256.pem` | P-256 VAPID key for Web Push (PKCS#8 PEM) |
//! | `turn_secret` | shared secret for coturn's REST credentials: one line of text, used as written, so the same line goes into coturn's `static-auth-secret` |
//! | `pseudonym.key` | key that turns IPs and ids into rate-limit bucket names (base64) |
//!
//! Existing files are never overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha512};

use crate::config::Config;
use crate::crypto::random_bytes;
use crate::crypto::xeddsa::KeyPair;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl ToString) -> KeyError {
    KeyError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// Loaded server keys.
pub struct ServerKeys {
    pub jwt_encoding: EncodingKey,
    pub jwt_decoding: DecodingKey,
    pub trust_root: KeyPair,
    pub server_cert: KeyPair,
    pub vapid: p256::SecretKey,
    /// The bytes of the secret's text (see the table above).
    pub turn_secret: Vec<u8>,
    pub pseudonym_key: [u8; 32],
}

struct Paths {
    jwt: PathBuf,
    trust_root: PathBuf,
    server_cert: PathBuf,
    vapid: PathBuf,
    turn: PathBuf,
    pseudonym: PathBuf,
}

fn paths(config: &Config) -> Paths {
    Paths {
        jwt: config.key_path(&config.jwt_key_file, "jwt_ed25519.pem"),
        trust_root: config.key_path(&config.trust_root_key_file, "trust_root.key"),
        server_cert: config.key_path(&config.server_cert_key_file, "server_cert.key"),
        vapid: config.key_path(&config.vapid_key_file, "vapid_p256.pem"),
        turn: config.key_path(&config.turn_secret_file, "turn_secret"),
        pseudonym: config.key_path(&config.pseudonym_key_file, "pseudonym.key"),
    }
}

/// Every key file by its default name and where this configuration keeps it, for backups.
pub fn key_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let p = paths(config);
    vec![
        ("jwt_ed25519.pem", p.jwt),
        ("trust_root.key", p.trust_root),
        ("server_cert.key", p.server_cert),
        ("vapid_p256.pem", p.vapid),
        ("turn_secret", p.turn),
        ("pseudonym.key", p.pseudonym),
    ]
}

/// Writes `contents` to a new file readable only by the owner; false when the file already exists.
fn write_new_secret(path: &Path, contents: &[u8]) -> Result<bool, KeyError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(|e| file_error(parent, e))?;
    }
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            file.write_all(contents).map_err(|e| file_error(path, e))?;
            file.sync_all().map_err(|e| file_error(path, e))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(file_error(path, e)),
    }
}

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): fixed 16-byte header, then the seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    let digest = Sha512::digest(seed);
    let mut scalar = [0u8; 32];
    scalar.copy_from_slice(&digest[..32]);
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    (&Scalar::from_bytes_mod_order(scalar) * ED25519_BASEPOINT_TABLE).compress().to_bytes()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str) -> Option<Vec<u8>> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body.trim()).ok()
}

fn b64_line(bytes: &[u8]) -> Vec<u8> {
    format!("{}\n", STANDARD.encode(bytes)).into_bytes()
}

fn read_b64_32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let bytes = STANDARD.decode(text.trim()).map_err(|_| file_error(path, "not base64"))?;
    bytes.as_slice().try_into().map_err(|_| file_error(path, "expected 32 bytes"))
}

/// Creates every missing key file; returns the paths it created.
pub fn generate_missing(config: &Config) -> Result<Vec<PathBuf>, KeyError> {
    let p = paths(config);
    let mut created = Vec::new();
    let seed: [u8; 32] = random_bytes();
    if write_new_secret(&p.jwt, pem("PRIVATE KEY", &ed25519_pkcs8(&seed)).as_bytes())? {
        created.push(p.jwt.clone());
    }
    for path in [&p.trust_root, &p.server_cert] {
        if write_new_secret(path, &b64_line(&KeyPair::generate().private_bytes()))? {
            created.push(path.clone());
        }
    }
    let vapid = p256::SecretKey::random(&mut rand::rngs::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| file_error(&p.vapid, e))?;
    if write_new_secret(&p.vapid, vapid.as_bytes())? {
        created.push(p.vapid.clone());
    }
    for path in [&p.turn, &p.pseudonym] {
        if write_new_secret(path, &b64_line(&random_bytes::<32>()))? {
            created.push(path.clone());
        }
    }
    Ok(created)
}

impl ServerKeys {
    /// Loads every key file (they must exist: see [`generate_missing`]).
    pub fn load(config: &Config) -> Result<ServerKeys, KeyError> {
        let p = paths(config);
        let jwt_text = fs::read_to_string(&p.jwt).map_err(|e| file_error(&p.jwt, e))?;
        let der = unpem(&jwt_text).ok_or_else(|| file_error(&p.jwt, "not PEM"))?;
        let header = ed25519_pkcs8(&[0; 32]);
        if der.len() != 48 || der[..16] != header[..16] {
            return Err(file_error(&p.jwt, "expected an unencrypted PKCS#8 Ed25519 key"));
        }
        let seed: [u8; 32] = der[16..].try_into().map_err(|_| file_error(&p.jwt, "bad Ed25519 key"))?;
        let jwt_encoding = EncodingKey::from_ed_der(&ed25519_pkcs8(&seed));
        let jwt_decoding = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(ed25519_public(&seed)))
            .map_err(|e| file_error(&p.jwt, e))?;
        let vapid_text = fs::read_to_string(&p.vapid).map_err(|e| file_error(&p.vapid, e))?;
        let vapid = p256::SecretKey::from_pkcs8_pem(&vapid_text).map_err(|e| file_error(&p.vapid, e))?;
        // coturn takes its secret as text and uses those bytes as the HMAC key: so do we, whatever the text.
        let turn_text = fs::read_to_string(&p.turn).map_err(|e| file_error(&p.turn, e))?;
        let turn_secret = turn_text.trim().as_bytes().to_vec();
        if turn_secret.len() < 16 || turn_secret.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(file_error(&p.turn, "expected one line of at least 16 printable characters"));
        }
        Ok(ServerKeys {
            jwt_encoding,
            jwt_decoding,
            trust_root: KeyPair::from_private(read_b64_32(&p.trust_root)?),
            server_cert: KeyPair::from_private(read_b64_32(&p.server_cert)?),
            vapid,
            turn_secret,
            pseudonym_key: read_b64_32(&p.pseudonym)?,
        })
    }

    /// The trust root's public key as clients pin it: base64 of the 33-byte serialised key.
    pub fn trust_root_public_b64(&self) -> String {
        STANDARD.encode(self.trust_root.public_serialized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_files_once_and_they_load() {
        let dir = std::env::temp_dir().join(format!("sealpost-keys-{}", uuid::Uuid::new_v4()));
        let config = Config { data_dir: dir.clone(), ..Config::default() };
        let created = generate_missing(&config).unwrap();
        assert_eq!(created.len(), 6);
        for path in &created {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let before = fs::read(dir.join("trust_root.key")).unwrap();
        assert!(generate_missing(&config).unwrap().is_empty());
        assert_eq!(before, fs::read(dir.join("trust_root.key")).unwrap());

        let keys = ServerKeys::load(&config).unwrap();
        // A token signed with the loaded key verifies with the derived public key.
        let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &keys.jwt_encoding,
        )
        .unwrap();
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::decode::<serde_json::Value>(&token, &keys.jwt_decoding, &validation).unwrap();
        assert_eq!(keys.trust_root_public_b64().len(), 44);
        fs::remove_dir_all(dir).unwrap();
    }
}
