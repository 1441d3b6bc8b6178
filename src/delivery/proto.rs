//! Wire messages, with the field numbers of Signal's own definitions so libsignal-based clients can reuse
//! their parsers. The `.proto` text lives in `proto/`; these structs must match it.

/// Envelope `type` values.
pub mod envelope_type {
    pub const CIPHERTEXT: i32 = 1;
    pub const PREKEY_BUNDLE: i32 = 3;
    pub const UNIDENTIFIED_SENDER: i32 = 6;
    pub const PLAINTEXT_CONTENT: i32 = 8;

    pub fn is_known(value: i32) -> bool {
        matches!(value, CIPHERTEXT | PREKEY_BUNDLE | UNIDENTIFIED_SENDER | PLAINTEXT_CONTENT)
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "5")]
    pub client_timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "7")]
    pub source_device: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub content: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "10")]
    pub server_timestamp: Option<u64>,
    #[prost(bool, optional, tag = "14")]
    pub urgent: Option<bool>,
    /// 16-byte aci of an identified sender; absent for sealed sender.
    #[prost(bytes = "vec", optional, tag = "19")]
    pub source_service_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "20")]
    pub destination_service_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "21")]
    pub server_guid: Option<Vec<u8>>,
}

pub mod ws_type {
    pub const REQUEST: i32 = 1;
    pub const RESPONSE: i32 = 2;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WebSocketMessage {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub request: Option<WebSocketRequestMessage>,
    #[prost(message, optional, tag = "3")]
    pub response: Option<WebSocketResponseMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WebSocketRequestMessage {
    #[prost(string, optional, tag = "1")]
    pub verb: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub path: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub body: Option<Vec<u8>>,
    #[prost(string, repeated, tag = "5")]
    pub headers: Vec<String>,
    #[prost(uint64, optional, tag = "4")]
    pub id: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WebSocketResponseMessage {
    #[prost(uint64, optional, tag = "1")]
    pub id: Option<u64>,
    #[prost(uint32, optional, tag = "2")]
    pub status: Option<u32>,
    #[prost(string, optional, tag = "3")]
    pub message: Option<String>,
    #[prost(string, repeated, tag = "5")]
    pub headers: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub body: Option<Vec<u8>>,
}

impl WebSocketMessage {
    pub fn request(id: u64, verb: &str, path: &str, body: Option<Vec<u8>>, headers: Vec<String>) -> Self {
        WebSocketMessage {
            r#type: Some(ws_type::REQUEST),
            request: Some(WebSocketRequestMessage {
                verb: Some(verb.into()),
                path: Some(path.into()),
                body,
                headers,
                id: Some(id),
            }),
            response: None,
        }
    }

    pub fn response(id: u64, status: u32, message: &str) -> Self {
        WebSocketMessage {
            r#type: Some(ws_type::RESPONSE),
            request: None,
            response: Some(WebSocketResponseMessage {
                id: Some(id),
                status: Some(status),
                message: Some(message.into()),
                headers: Vec::new(),
                body: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn envelope_fields_use_signals_numbers() {
        let envelope = Envelope { r#type: Some(6), server_guid: Some(vec![0xab; 16]), ..Default::default() };
        let bytes = envelope.encode_to_vec();
        // field 1 varint 6, then field 21 length-delimited (tag (21 << 3) | 2 = 170 = 0xaa 0x01), length 16.
        assert_eq!(&bytes[..5], &[0x08, 0x06, 0xaa, 0x01, 0x10]);
        assert_eq!(Envelope::decode(bytes.as_slice()).unwrap(), envelope);
    }

    /// Field number → wire type of every message in `proto/sealpost.proto` (nested ones as `Outer.Inner`).
    fn proto_file() -> std::collections::BTreeMap<String, std::collections::BTreeMap<u32, u8>> {
        let text = include_str!("../../proto/sealpost.proto");
        let mut messages = std::collections::BTreeMap::new();
        let mut stack: Vec<String> = Vec::new();
        for line in text.lines().map(|l| l.split("//").next().unwrap_or("").trim()) {
            if let Some(name) = line.strip_prefix("message ").and_then(|l| l.strip_suffix('{')) {
                stack.push(name.trim().to_owned());
                messages.insert(stack.join("."), std::collections::BTreeMap::new());
            } else if line == "}" {
                stack.pop();
            } else if let Some((decl, number)) = line.strip_suffix(';').and_then(|l| l.split_once('=')) {
                let words: Vec<&str> = decl.split_whitespace().collect();
                let [_label, kind, _name] = words[..] else { continue };
                let wire = match kind {
                    "int32" | "uint32" | "uint64" | "int64" | "bool" => 0,
                    "fixed64" => 1,
                    _ => 2,
                };
                let number: u32 = number.trim().parse().expect("field number");
                messages.get_mut(&stack.join(".")).expect("inside a message").insert(number, wire);
            }
        }
        messages
    }

    /// Field number → wire type as actually encoded by a struct with every field set.
    fn encoded(bytes: &[u8]) -> std::collections::BTreeMap<u32, u8> {
        use prost::encoding::{DecodeContext, decode_key, skip_field};
        let mut fields = std::collections::BTreeMap::new();
        let mut buf = bytes;
        while !buf.is_empty() {
            let (number, wire) = decode_key(&mut buf).expect("key");
            fields.insert(number, wire as u8);
            skip_field(wire, number, &mut buf, DecodeContext::default()).expect("field");
        }
        fields
    }

    #[test]
    fn structs_match_the_proto_file() {
        use crate::crypto::sender_certificate::{SenderCertificateBody, ServerCertificateBody, Signed};
        let file = proto_file();
        let bytes = |n: usize| Some(vec![1u8; n]);
        let request = WebSocketRequestMessage {
            verb: Some("PUT".into()),
            path: Some("/".into()),
            body: bytes(1),
            headers: vec!["a:b".into()],
            id: Some(1),
        };
        let response = WebSocketResponseMessage {
            id: Some(1),
            status: Some(200),
            message: Some("OK".into()),
            headers: vec!["a:b".into()],
            body: bytes(1),
        };
        let signed = Signed { certificate: bytes(1), signature: bytes(1) }.encode_to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "Envelope",
                Envelope {
                    r#type: Some(1),
                    client_timestamp: Some(1),
                    source_device: Some(1),
                    content: bytes(1),
                    server_timestamp: Some(1),
                    urgent: Some(true),
                    source_service_id: bytes(16),
                    destination_service_id: bytes(16),
                    server_guid: bytes(16),
                }
                .encode_to_vec(),
            ),
            (
                "WebSocketMessage",
                WebSocketMessage { r#type: Some(1), request: Some(request.clone()), response: Some(response.clone()) }
                    .encode_to_vec(),
            ),
            ("WebSocketRequestMessage", request.encode_to_vec()),
            ("WebSocketResponseMessage", response.encode_to_vec()),
            ("ServerCertificate", signed.clone()),
            ("SenderCertificate", signed),
            ("ServerCertificate.Certificate", ServerCertificateBody { id: Some(1), key: bytes(33) }.encode_to_vec()),
            (
                "SenderCertificate.Certificate",
                SenderCertificateBody {
                    sender_device: Some(1),
                    expires: Some(1),
                    identity_key: bytes(33),
                    signer: bytes(1),
                    sender_uuid: Some("x".into()),
                }
                .encode_to_vec(),
            ),
        ];
        assert_eq!(cases.len(), file.len(), "every message of the .proto file has a struct: {:?}", file.keys());
        for (name, bytes) in cases {
            assert_eq!(file.get(name), Some(&encoded(&bytes)), "{name} differs from proto/sealpost.proto");
        }
    }

    #[test]
    fn websocket_request_round_trips() {
        let message =
            WebSocketMessage::request(u64::MAX, "PUT", "/api/v1/message", Some(vec![1, 2]), vec!["a:b".into()]);
        let decoded = WebSocketMessage::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, message);
    }
}
