//! The OpenAPI 3 description of the public API, served at `/openapi.json`.
//!
//! One table ([`ENDPOINTS`]) lists every route with its authentication and answers; a unit test reads the
//! routers in the source and fails when a route is missing here or listed here but not served.

use serde_json::{Map, Value, json};

/// How an endpoint authenticates its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic,
    Bearer,
    BearerOrAccessKey,
    /// Only an unidentified-access key (the combined key of a multi-recipient send).
    AccessKey,
    /// An attachment's one-time upload credential (`Upload-Credential`).
    UploadCredential,
}

struct Endpoint {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    /// Name of the request schema in `components.schemas`, if the endpoint takes a JSON body.
    body: Option<&'static str>,
    /// Status codes with the error `code`s (or a description) each may carry.
    responses: &'static [(u16, &'static str)],
}

/// The body name that stands for the binary multi-recipient message rather than a JSON schema.
const MULTI_RECIPIENT_BODY: &str = "MultiRecipientMessage";
/// The body name that stands for the raw bytes of a tus upload.
const UPLOAD_BODY: &str = "UploadBytes";

/// Bodies that are bytes, not JSON, with their content types.
const BINARY_BODIES: &[(&str, &str)] =
    &[(MULTI_RECIPIENT_BODY, "application/vnd.signal-messenger.mrm"), (UPLOAD_BODY, "application/offset+octet-stream")];

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "get",
        path: "/healthz",
        summary: "Liveness",
        auth: Auth::None,
        body: None,
        responses: &[(200, "alive: {status, version, uptimeSeconds}")],
    },
    Endpoint {
        method: "get",
        path: "/readyz",
        summary: "Readiness of every configured store",
        auth: Auth::None,
        body: None,
        responses: &[(200, "ready"), (503, "unavailable")],
    },
    Endpoint {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        auth: Auth::None,
        body: None,
        responses: &[(200, "OpenAPI 3 document")],
    },
    Endpoint {
        method: "get",
        path: "/docs",
        summary: "This document as a readable page (HTML, no scripts)",
        auth: Auth::None,
        body: None,
        responses: &[(200, "HTML page")],
    },
    Endpoint {
        method: "get",
        path: "/demo",
        summary: "Redirect to the browser demo (when SEALPOST_DEMO is on)",
        auth: Auth::None,
        body: None,
        responses: &[(308, "to /demo/"), (404, "not_found")],
    },
    Endpoint {
        method: "get",
        path: "/demo/",
        summary: "The browser demo: a QR-initiated call through this server (HTML; when SEALPOST_DEMO is on)",
        auth: Auth::None,
        body: None,
        responses: &[(200, "the page (text/html)"), (404, "not_found")],
    },
    Endpoint {
        method: "get",
        path: "/demo/{file}",
        summary: "A script or style sheet of the browser demo",
        auth: Auth::None,
        body: None,
        responses: &[(200, "the file"), (404, "not_found")],
    },
    Endpoint {
        method: "post",
        path: "/v1/accounts",
        summary: "Register an account and its primary device (no phone number, e-mail or name)",
        auth: Auth::None,
        body: Some("Registration"),
        responses: &[
            (201, "created: {aci, deviceId}"),
            (
                400,
                "malformed_json, invalid_body, unknown_field, bad_base64, invalid_key_length, invalid_key_type, invalid_registration_id, invalid_device_secret",
            ),
            (403, "invite_required, invalid_invite"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "delete",
        path: "/v1/accounts/me",
        summary: "Delete the account and everything of it (primary only)",
        auth: Auth::Bearer,
        body: None,
        responses: &[(204, "deleted"), (401, "unauthorized"), (403, "primary_device_required")],
    },
    Endpoint {
        method: "put",
        path: "/v1/accounts/me/attributes",
        summary: "Set the sealed-sender access key",
        auth: Auth::Bearer,
        body: Some("Attributes"),
        responses: &[(204, "stored"), (400, "bad_base64, invalid_key_length, unknown_field"), (401, "unauthorized")],
    },
    Endpoint {
        method: "post",
        path: "/v1/auth/token",
        summary: "Exchange a device secret (HTTP Basic `{aci}.{deviceId}:{base64 secret}`) for a short-lived token",
        auth: Auth::Basic,
        body: None,
        responses: &[
            (200, "{token, expiresIn}"),
            (401, "unauthorized"),
            (403, "pending_approval"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/devices",
        summary: "List the account's devices",
        auth: Auth::Bearer,
        body: None,
        responses: &[(200, "{devices: [{id, name?, created, lastSeen}]}"), (401, "unauthorized")],
    },
    Endpoint {
        method: "delete",
        path: "/v1/devices/{id}",
        summary: "Unlink a device (primary only): its tokens, sockets, queue and keys are gone at once",
        auth: Auth::Bearer,
        body: None,
        responses: &[
            (204, "removed"),
            (400, "invalid_path"),
            (401, "unauthorized"),
            (403, "primary_device_required"),
            (404, "not_found"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/devices/provisioning/code",
        summary: "A single-use link code for a new device (primary only)",
        auth: Auth::Bearer,
        body: None,
        responses: &[
            (200, "{verificationCode, expiresAt}"),
            (401, "unauthorized"),
            (403, "primary_device_required"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "put",
        path: "/v1/provisioning/{address}",
        summary: "Relay an opaque provisioning message to a provisioning socket (primary only)",
        auth: Auth::Bearer,
        body: Some("ProvisioningMessage"),
        responses: &[
            (204, "relayed"),
            (400, "bad_base64"),
            (401, "unauthorized"),
            (403, "primary_device_required"),
            (404, "not_found"),
            (413, "message_too_large"),
        ],
    },
    Endpoint {
        method: "put",
        path: "/v1/devices/link",
        summary: "Join an account as a new device with a link code",
        auth: Auth::None,
        body: Some("Link"),
        responses: &[
            (200, "{aci, deviceId}"),
            (
                400,
                "bad_base64, invalid_key_length, invalid_key_type, invalid_key_id, invalid_registration_id, invalid_device_secret, invalid_body",
            ),
            (403, "invalid_verification_code"),
            (409, "too_many_devices"),
            (422, "invalid_signature"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/websocket/provisioning",
        summary: "WebSocket of a device being linked: receives its address, then one relayed message",
        auth: Auth::None,
        body: None,
        responses: &[(101, "switching protocols"), (429, "rate_limited")],
    },
    Endpoint {
        method: "put",
        path: "/v1/keys",
        summary: "Upload signed, last-resort and one-time prekeys (each list replaces that pool)",
        auth: Auth::Bearer,
        body: Some("KeyUpload"),
        responses: &[
            (204, "stored"),
            (
                400,
                "bad_base64, invalid_key_length, invalid_key_type, invalid_key_id, too_many_keys, duplicate_key_id, unknown_field",
            ),
            (401, "unauthorized"),
            (422, "invalid_signature"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/keys/count",
        summary: "Unused one-time prekeys of the calling device",
        auth: Auth::Bearer,
        body: None,
        responses: &[(200, "{count, pqCount}"), (401, "unauthorized")],
    },
    Endpoint {
        method: "get",
        path: "/v1/keys/{aci}/{device}",
        summary: "Fetch prekey bundles (device id or `*`), claiming one EC and one Kyber one-time key per device",
        auth: Auth::BearerOrAccessKey,
        body: None,
        responses: &[
            (200, "{identityKey, devices: [{deviceId, registrationId, signedPreKey, preKey?, pqPreKey}]}"),
            (400, "invalid_path"),
            (401, "unauthorized"),
            (404, "not_found"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "put",
        path: "/v1/messages/{aci}",
        summary: "Send one envelope per device of the recipient",
        auth: Auth::BearerOrAccessKey,
        body: Some("Send"),
        responses: &[
            (200, "{needsSync}"),
            (400, "invalid_message_type, invalid_ttl, bad_base64, invalid_body, invalid_path"),
            (401, "unauthorized"),
            (404, "not_found"),
            (409, "mismatched_devices {missingDevices, extraDevices}"),
            (410, "stale_devices {staleDevices}"),
            (413, "message_too_large, payload_too_large"),
            (429, "rate_limited"),
            (507, "queue_full"),
        ],
    },
    Endpoint {
        method: "put",
        path: "/v1/messages/multi_recipient",
        summary: "Send one sealed-sender message to many recipients (libsignal's multi-recipient format)",
        auth: Auth::AccessKey,
        body: Some(MULTI_RECIPIENT_BODY),
        responses: &[
            (200, "{uuids404: [], notQueued: [{uuid, reason}]}"),
            (400, "invalid_multi_recipient_message, invalid_ttl, invalid_query"),
            (401, "unauthorized (the combined access key does not match)"),
            (409, "mismatched_devices {recipients: [{uuid, devices: {missingDevices, extraDevices}}]}"),
            (410, "stale_devices {recipients: [{uuid, devices: {staleDevices}}]}"),
            (413, "message_too_large, payload_too_large"),
            (415, "unsupported_media_type"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/messages",
        summary: "Pending envelopes, oldest first, for clients without a socket",
        auth: Auth::Bearer,
        body: None,
        responses: &[(200, "{messages: [...], more}"), (401, "unauthorized")],
    },
    Endpoint {
        method: "delete",
        path: "/v1/messages/uuid/{guid}",
        summary: "Acknowledge (delete) one envelope",
        auth: Auth::Bearer,
        body: None,
        responses: &[(204, "deleted or already gone"), (400, "invalid_path"), (401, "unauthorized")],
    },
    Endpoint {
        method: "get",
        path: "/v1/certificate/delivery",
        summary: "A sealed-sender SenderCertificate for the calling device",
        auth: Auth::Bearer,
        body: None,
        responses: &[(200, "{certificate}"), (401, "unauthorized")],
    },
    Endpoint {
        method: "get",
        path: "/v1/certificate/trust-root",
        summary: "The sealed-sender trust root's public key, for clients to pin",
        auth: Auth::None,
        body: None,
        responses: &[(200, "{publicKey}")],
    },
    Endpoint {
        method: "post",
        path: "/v1/contact-tokens",
        summary: "Create a contact token (what a QR code holds); the token is shown only in this answer",
        auth: Auth::Bearer,
        body: Some("ContactTokenRequest"),
        responses: &[
            (201, "{id, token, uri, expiresAt}"),
            (400, "invalid_body, invalid_ttl, bad_base64"),
            (401, "unauthorized"),
            (409, "too_many_contact_tokens"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/contact-tokens",
        summary: "The caller's account's contact tokens (never the tokens themselves)",
        auth: Auth::Bearer,
        body: None,
        responses: &[
            (200, "{tokens: [{id, label, created, expiresAt, maxUses, uses, revoked}]}"),
            (401, "unauthorized"),
        ],
    },
    Endpoint {
        method: "delete",
        path: "/v1/contact-tokens/{id}",
        summary: "Revoke a contact token, at once",
        auth: Auth::Bearer,
        body: None,
        responses: &[(204, "revoked"), (400, "invalid_path"), (401, "unauthorized"), (404, "not_found")],
    },
    Endpoint {
        method: "get",
        path: "/v1/contact/{token}",
        summary: "Resolve a contact token: whom to contact (no account needed)",
        auth: Auth::None,
        body: None,
        responses: &[
            (200, "{aci, identityKey}"),
            (404, "not_found (unknown, revoked, expired or used up: one answer)"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "post",
        path: "/v1/attachments",
        summary: "Start an attachment upload: an id (the download capability) and a one-time upload credential",
        auth: Auth::Bearer,
        body: Some("AttachmentRequest"),
        responses: &[
            (201, "{id, uploadUrl, uploadCredential, downloadUrl, uploadUntil, expiresAt}"),
            (400, "invalid_body"),
            (401, "unauthorized"),
            (413, "attachment_too_large"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "options",
        path: "/v1/attachments/{id}/upload",
        summary: "tus discovery: Tus-Version, Tus-Max-Size",
        auth: Auth::None,
        body: None,
        responses: &[(204, "tus headers")],
    },
    Endpoint {
        method: "head",
        path: "/v1/attachments/{id}/upload",
        summary: "tus: where the upload stands (Upload-Offset, Upload-Length)",
        auth: Auth::UploadCredential,
        body: None,
        responses: &[(200, "Upload-Offset"), (403, "invalid_upload_credential"), (412, "unsupported_tus_version")],
    },
    Endpoint {
        method: "patch",
        path: "/v1/attachments/{id}/upload",
        summary: "tus: append bytes at Upload-Offset; bytes received before a broken connection are kept",
        auth: Auth::UploadCredential,
        body: Some(UPLOAD_BODY),
        responses: &[
            (204, "Upload-Offset after the bytes"),
            (400, "invalid_header"),
            (403, "invalid_upload_credential"),
            (409, "upload_offset_mismatch (Upload-Offset says where the upload stands)"),
            (412, "unsupported_tus_version"),
            (413, "attachment_too_large"),
            (415, "unsupported_media_type"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/attachments/{id}",
        summary: "Download an attachment (no account: the id is the capability); one Range supported",
        auth: Auth::None,
        body: None,
        responses: &[
            (200, "the bytes"),
            (206, "the range asked for"),
            (404, "not_found (unknown, unfinished or expired)"),
            (416, "range_not_satisfiable"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "get",
        path: "/v1/calling/relays",
        summary: "Short-lived TURN credentials for the operator's coturn (empty when none is configured)",
        auth: Auth::Bearer,
        body: None,
        responses: &[
            (200, "{relays: [{urls, username, password, ttl}]}"),
            (401, "unauthorized"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "put",
        path: "/v1/devices/me/push",
        summary: "Set the calling device's Web Push subscription (as PushSubscription.toJSON() gives it); wakeups carry no payload",
        auth: Auth::Bearer,
        body: Some("PushSubscription"),
        responses: &[
            (204, "stored (replacing any earlier subscription of the device)"),
            (
                400,
                "invalid_push_endpoint, push_endpoint_not_https, push_endpoint_not_public, push_endpoint_unresolvable, invalid_push_keys, invalid_body, unknown_field",
            ),
            (401, "unauthorized"),
            (429, "rate_limited"),
        ],
    },
    Endpoint {
        method: "delete",
        path: "/v1/devices/me/push",
        summary: "Remove the calling device's Web Push subscription (no more wakeups)",
        auth: Auth::Bearer,
        body: None,
        responses: &[(204, "removed, or there was none"), (401, "unauthorized")],
    },
    Endpoint {
        method: "get",
        path: "/v1/push/vapid",
        summary: "The server's VAPID public key (base64url, uncompressed P-256 point): PushManager's applicationServerKey",
        auth: Auth::None,
        body: None,
        responses: &[(200, "{publicKey}")],
    },
    Endpoint {
        method: "get",
        path: "/v1/websocket",
        summary: "Delivery WebSocket (token in `Authorization: Bearer` or `?token=`)",
        auth: Auth::Bearer,
        body: None,
        responses: &[(101, "switching protocols"), (401, "unauthorized")],
    },
];

fn b64(description: &str) -> Value {
    json!({"type": "string", "format": "byte", "description": description})
}

fn signed_key() -> Value {
    json!({"type": "object", "required": ["keyId", "publicKey", "signature"], "properties": {
        "keyId": {"type": "integer", "minimum": 1, "maximum": 16_777_215},
        "publicKey": b64("33-byte EC key (0x05…) or 1569-byte Kyber-1024 key (0x08…)"),
        "signature": b64("64-byte XEdDSA signature by the identity key over publicKey"),
    }})
}

fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "staleDevices": {"type": "array", "items": {"type": "integer"}},
            "missingDevices": {"type": "array", "items": {"type": "integer"}},
            "extraDevices": {"type": "array", "items": {"type": "integer"}},
        }},
        "AttachmentRequest": {"type": "object", "additionalProperties": false, "required": ["length"], "properties": {
            "length": {"type": "integer", "minimum": 1, "description": "bytes the upload will hold (after client-side encryption)"},
        }},
        "ContactTokenRequest": {"type": "object", "additionalProperties": false, "properties": {
            "ttlSeconds": {"type": "integer", "minimum": 1},
            "maxUses": {"type": "integer", "minimum": 1},
            "label": b64("encrypted by the owner's client; opaque"),
        }},
        "PushSubscription": {"type": "object", "additionalProperties": false, "required": ["endpoint", "keys"], "properties": {
            "endpoint": {"type": "string", "format": "uri", "description": "https on a public address, unless the operator allows the origin"},
            "expirationTime": {"description": "ignored"},
            "keys": {"type": "object", "additionalProperties": false, "required": ["p256dh", "auth"], "properties": {
                "p256dh": {"type": "string", "description": "base64url, 65-byte uncompressed P-256 point (checked, not stored)"},
                "auth": {"type": "string", "description": "base64url, 16 bytes (checked, not stored)"},
            }},
        }},
        "Registration": {"type": "object", "additionalProperties": false,
            "required": ["identityKey", "registrationId", "deviceSecret"], "properties": {
            "identityKey": b64("33 bytes, 0x05 prefix"),
            "registrationId": {"type": "integer", "minimum": 1, "maximum": 16380},
            "deviceSecret": b64("32 to 64 random bytes"),
            "inviteCode": {"type": "string"},
        }},
        "Attributes": {"type": "object", "additionalProperties": false, "properties": {
            "unidentifiedAccessKey": b64("16 bytes"),
            "unrestrictedUnidentifiedAccess": {"type": "boolean"},
        }},
        "SignedKey": signed_key(),
        "KeyUpload": {"type": "object", "additionalProperties": false, "properties": {
            "signedPreKey": {"$ref": "#/components/schemas/SignedKey"},
            "pqLastResortPreKey": {"$ref": "#/components/schemas/SignedKey"},
            "preKeys": {"type": "array", "maxItems": 100, "items": {"type": "object", "properties": {
                "keyId": {"type": "integer"}, "publicKey": b64("33-byte EC key")}}},
            "pqPreKeys": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/SignedKey"}},
        }},
        "ProvisioningMessage": {"type": "object", "required": ["body"], "properties": {"body": b64("opaque, client-encrypted")}},
        "Link": {"type": "object", "additionalProperties": false,
            "required": ["verificationCode", "deviceSecret", "registrationId", "signedPreKey", "pqLastResortPreKey"], "properties": {
            "verificationCode": {"type": "string"},
            "deviceSecret": b64("32 to 64 random bytes"),
            "registrationId": {"type": "integer", "minimum": 1, "maximum": 16380},
            "name": b64("client-encrypted device name"),
            "signedPreKey": {"$ref": "#/components/schemas/SignedKey"},
            "pqLastResortPreKey": {"$ref": "#/components/schemas/SignedKey"},
        }},
        "Send": {"type": "object", "required": ["messages", "timestamp"], "properties": {
            "messages": {"type": "array", "items": {"type": "object",
                "required": ["type", "destinationDeviceId", "destinationRegistrationId", "content"], "properties": {
                "type": {"type": "integer", "enum": [1, 3, 6, 8]},
                "destinationDeviceId": {"type": "integer"},
                "destinationRegistrationId": {"type": "integer"},
                "content": b64("opaque ciphertext, at most 96 KiB by default"),
            }}},
            "timestamp": {"type": "integer"},
            "online": {"type": "boolean"},
            "urgent": {"type": "boolean"},
            "ttlSeconds": {"type": "integer", "minimum": 1},
        }},
    })
}

/// The whole document.
/// Every route of the public API with how it authenticates: the authorization tests call each route that
/// takes a token with every kind of bad credential, so a new route is covered as soon as it is listed here
/// (and it must be: a unit test compares this table with the routers).
pub fn routes() -> Vec<(&'static str, &'static str, Auth)> {
    ENDPOINTS.iter().map(|e| (e.method, e.path, e.auth)).collect()
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let mut responses = Map::new();
        for (status, text) in endpoint.responses {
            let mut response = json!({"description": text});
            if *status >= 400 {
                response["content"] = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
            }
            responses.insert(status.to_string(), response);
        }
        let security = match endpoint.auth {
            Auth::None => json!([]),
            Auth::Basic => json!([{"deviceSecret": []}]),
            Auth::Bearer => json!([{"bearer": []}]),
            Auth::BearerOrAccessKey => json!([{"bearer": []}, {"unidentifiedAccessKey": []}, {"contactToken": []}]),
            Auth::AccessKey => json!([{"unidentifiedAccessKey": []}]),
            Auth::UploadCredential => json!([{"uploadCredential": []}]),
        };
        let parameters: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "summary": endpoint.summary,
            "security": security,
            "parameters": parameters,
            "responses": responses,
        });
        let binary = BINARY_BODIES.iter().find(|(name, _)| Some(*name) == endpoint.body);
        match endpoint.body {
            Some(_) if let Some((_, content_type)) = binary => {
                operation["requestBody"] = json!({"required": true, "content": {*content_type: {
                    "schema": {"type": "string", "format": "binary"}}}});
            }
            Some(body) => {
                operation["requestBody"] = json!({"required": true, "content": {"application/json": {
                    "schema": {"$ref": format!("#/components/schemas/{body}")}}}});
            }
            None => {}
        }
        let entry = paths.entry(endpoint.path).or_insert_with(|| json!({}));
        entry[endpoint.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "sealpost", "version": env!("CARGO_PKG_VERSION"),
            "description": "Relay server for end-to-end-encrypted messengers. See docs/api.md."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "deviceSecret": {"type": "http", "scheme": "basic"},
                "unidentifiedAccessKey": {"type": "apiKey", "in": "header", "name": "Unidentified-Access-Key"},
                "contactToken": {"type": "apiKey", "in": "header", "name": "Contact-Token"},
                "uploadCredential": {"type": "apiKey", "in": "header", "name": "Upload-Credential"},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `.route("path", method(...))` in the source, read from the files themselves.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source file");
                for chunk in text.split(".route(").skip(1) {
                    let Some(rest) = chunk.trim_start().strip_prefix('"') else { continue };
                    let Some((route, after)) = rest.split_once('"') else { continue };
                    // The method router: `get(a)`, or chained, `post(a).get(b)`, up to the route's close.
                    let after = after.trim_start_matches([',', ' ', '\n']);
                    let methods = after.split("))").next().unwrap_or_default();
                    for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
                        let chained = format!(".{method}(");
                        if methods.starts_with(&format!("{method}(")) || methods.contains(&chained) {
                            found.insert((method.to_owned(), route.to_owned()));
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn document_lists_exactly_the_served_routes() {
        let mut served = routes_in_source();
        // Served on the separate metrics listener, not part of the public API.
        assert!(served.remove(&("get".to_owned(), "/metrics".to_owned())));
        assert!(served.len() >= 20, "route scan found too little: {served:?}");
        let documented: BTreeSet<(String, String)> =
            ENDPOINTS.iter().map(|e| (e.method.to_owned(), e.path.to_owned())).collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI table: {undocumented:?}");
        assert!(unserved.is_empty(), "documented routes nobody serves: {unserved:?}");
    }

    #[test]
    fn document_is_well_formed() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        for endpoint in ENDPOINTS {
            let operation = &doc["paths"][endpoint.path][endpoint.method];
            assert!(operation.is_object(), "{} {}", endpoint.method, endpoint.path);
            if let Some(body) = endpoint.body.filter(|b| BINARY_BODIES.iter().all(|(name, _)| name != b)) {
                assert!(doc["components"]["schemas"][body].is_object(), "schema {body} exists");
            }
        }
    }
}
