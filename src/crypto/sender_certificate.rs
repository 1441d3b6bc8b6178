//! Sealed-sender certificates, in libsignal's protobuf forms (`sealed_sender.proto`).
//!
//! The trust root (pinned by clients) signs a `ServerCertificate` naming the server key; the server key
//! signs each device's `SenderCertificate` (its aci, device id, identity key and expiry). A recipient's
//! libsignal checks both signatures with XEdDSA over the exact inner `certificate` bytes.

use prost::Message;

use crate::crypto::sha256;
use crate::crypto::xeddsa::KeyPair;
use crate::domain::{Aci, DeviceId, EcPublicKey};

/// `{certificate, signature}`: the outer form of both certificates.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Signed {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub certificate: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerCertificateBody {
    #[prost(uint32, optional, tag = "1")]
    pub id: Option<u32>,
    /// 33-byte serialised Curve25519 key.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub key: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderCertificateBody {
    #[prost(uint32, optional, tag = "2")]
    pub sender_device: Option<u32>,
    /// Milliseconds since the epoch; libsignal insists on fixed64.
    #[prost(fixed64, optional, tag = "3")]
    pub expires: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub identity_key: Option<Vec<u8>>,
    /// The whole serialised `ServerCertificate` (embedded, as a self-hosted server must).
    #[prost(bytes = "vec", optional, tag = "5")]
    pub signer: Option<Vec<u8>>,
    /// The sender's aci as a lowercase hyphenated string, which libsignal uses for session lookups.
    #[prost(string, optional, tag = "6")]
    pub sender_uuid: Option<String>,
}

/// Key id that libsignal treats as revoked; never used for ours.
const REVOKED_KEY_ID: u32 = 0xDEAD_C357;

/// The server certificate, made once at start-up.
pub struct Certifier {
    server_key: KeyPair,
    server_certificate: Vec<u8>,
    trust_root_public: [u8; 33],
}

impl Certifier {
    pub fn new(trust_root: &KeyPair, server_key: KeyPair) -> Self {
        let public = server_key.public_serialized();
        let digest = sha256(&public);
        let mut id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        if id == REVOKED_KEY_ID {
            id ^= 1;
        }
        let body = ServerCertificateBody { id: Some(id), key: Some(public.to_vec()) }.encode_to_vec();
        let signature = trust_root.sign(&body);
        let server_certificate =
            Signed { certificate: Some(body), signature: Some(signature.to_vec()) }.encode_to_vec();
        Certifier { server_key, server_certificate, trust_root_public: trust_root.public_serialized() }
    }

    pub fn trust_root_public(&self) -> [u8; 33] {
        self.trust_root_public
    }

    /// A `SenderCertificate` for the device, valid until `expires_ms`.
    pub fn sender_certificate(
        &self,
        aci: Aci,
        device: DeviceId,
        identity_key: &EcPublicKey,
        expires_ms: u64,
    ) -> Vec<u8> {
        let body = SenderCertificateBody {
            sender_device: Some(device.0),
            expires: Some(expires_ms),
            identity_key: Some(identity_key.0.to_vec()),
            signer: Some(self.server_certificate.clone()),
            sender_uuid: Some(aci.to_string()),
        }
        .encode_to_vec();
        let signature = self.server_key.sign(&body);
        Signed { certificate: Some(body), signature: Some(signature.to_vec()) }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::xeddsa::verify;

    #[test]
    fn chain_verifies_to_the_trust_root() {
        let root = KeyPair::generate();
        let server = KeyPair::generate();
        let certifier = Certifier::new(&root, server.clone());
        let aci = Aci::random();
        let identity = EcPublicKey([5; 33]);
        let bytes = certifier.sender_certificate(aci, DeviceId(3), &identity, 1_000);

        let outer = Signed::decode(bytes.as_slice()).unwrap();
        let body_bytes = outer.certificate.unwrap();
        let sig: [u8; 64] = outer.signature.unwrap().try_into().unwrap();
        assert!(verify(&server.public_bytes(), &body_bytes, &sig));
        let body = SenderCertificateBody::decode(body_bytes.as_slice()).unwrap();
        assert_eq!(body.sender_uuid.as_deref(), Some(aci.to_string().as_str()));
        assert_eq!(body.sender_device, Some(3));
        assert_eq!(body.expires, Some(1_000));

        let server_cert = Signed::decode(body.signer.unwrap().as_slice()).unwrap();
        let server_body = server_cert.certificate.unwrap();
        let sig: [u8; 64] = server_cert.signature.unwrap().try_into().unwrap();
        assert!(verify(&root.public_bytes(), &server_body, &sig));
        let decoded = ServerCertificateBody::decode(server_body.as_slice()).unwrap();
        assert_eq!(decoded.key.unwrap(), server.public_serialized().to_vec());
        assert_ne!(decoded.id, Some(REVOKED_KEY_ID));
    }
}
