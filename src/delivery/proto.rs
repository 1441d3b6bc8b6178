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

    #[test]
    fn websocket_request_round_trips() {
        let message =
            WebSocketMessage::request(u64::MAX, "PUT", "/api/v1/message", Some(vec![1, 2]), vec!["a:b".into()]);
        let decoded = WebSocketMessage::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, message);
    }
}
