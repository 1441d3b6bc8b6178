//! `/docs`: the OpenAPI document rendered as one readable HTML page, on the server, from
//! [`super::openapi::document`], so the page and `/openapi.json` never disagree.
//!
//! The page has no script and loads nothing: its one stylesheet is inline and allowed by its hash in the
//! page's Content-Security-Policy, everything else is refused. Every text taken from the document is
//! escaped, so a description can never become markup.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use serde_json::Value;
use sha2::Digest;

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;\
color:#1d1d1f;background:#fff}h1{margin-bottom:0}code{font:13px ui-monospace,monospace}\
nav ul{columns:2;padding-left:1.2rem}section{border-top:1px solid #ddd;padding:.5rem 0}\
.m{display:inline-block;min-width:4.5rem;font:bold 13px ui-monospace,monospace;text-transform:uppercase}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}\
ul.schema{margin:.2rem 0}.t{color:#666}@media(prefers-color-scheme:dark){body{background:#111;color:#eee}\
section,td,th{border-color:#444}.t{color:#aaa}}";

/// The page.
pub async fn page() -> Response {
    let mut response = Html(render(&super::openapi::document())).into_response();
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE.as_bytes()));
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// HTML-escapes `text` for element content and quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(value: &Value) -> String {
    esc(value.as_str().unwrap_or_default())
}

/// An anchor name made of the path and method (letters and digits only).
fn anchor(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    id.extend(path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }));
    id
}

pub fn render(doc: &Value) -> String {
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let mut nav = String::new();
    let mut body = String::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap_or(&empty) {
            let id = anchor(method, path);
            nav.push_str(&format!(
                "<li><a href=\"#{id}\"><span class=m>{}</span><code>{}</code></a></li>",
                esc(method),
                esc(path)
            ));
            body.push_str(&operation_html(&id, method, path, operation));
        }
    }
    let mut schemas = String::new();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&empty) {
        schemas.push_str(&format!(
            "<section id=\"schema-{0}\"><h3><code>{0}</code></h3>{1}</section>",
            esc(name),
            schema_html(schema)
        ));
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport \
         content=\"width=device-width,initial-scale=1\"><title>{title} API</title><style>{STYLE}</style></head>\
         <body><h1>{title} API <span class=t>{version}</span></h1><p>{description} The machine-readable form: \
         <a href=\"/openapi.json\"><code>/openapi.json</code></a>.</p><nav><h2>Endpoints</h2><ul>{nav}</ul></nav>\
         {body}<h2>Schemas</h2>{schemas}</body></html>",
        title = text(&doc["info"]["title"]),
        version = text(&doc["info"]["version"]),
        description = text(&doc["info"]["description"]),
    )
}

fn operation_html(id: &str, method: &str, path: &str, operation: &Value) -> String {
    let mut out = format!(
        "<section id=\"{id}\"><h3><span class=m>{}</span><code>{}</code></h3><p>{}</p>",
        esc(method),
        esc(path),
        text(&operation["summary"])
    );
    let schemes: Vec<String> = operation["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|requirement| requirement.as_object())
        .flat_map(|requirement| requirement.keys().map(|k| format!("<code>{}</code>", esc(k))))
        .collect();
    let auth = if schemes.is_empty() { "none".to_owned() } else { schemes.join(" or ") };
    out.push_str(&format!("<p>Authentication: {auth}</p>"));
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            out.push_str(&format!(
                "<p>Request body (<code>{}</code>): {}</p>",
                esc(media),
                schema_html(&body["schema"])
            ));
        }
    }
    out.push_str("<table><tr><th>status</th><th>meaning</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        out.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(status), text(&response["description"])));
    }
    out.push_str("</table></section>");
    out
}

/// A schema as nested lists: a reference links to its schema, an object lists its properties.
fn schema_html(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\"><code>{0}</code></a>", esc(name));
    }
    let mut out = String::new();
    if let Some(kind) = schema["type"].as_str() {
        out.push_str(&format!("<span class=t>{}</span>", esc(kind)));
        if let Some(format) = schema["format"].as_str() {
            out.push_str(&format!(" <span class=t>({})</span>", esc(format)));
        }
    }
    if let Some(description) = schema["description"].as_str() {
        out.push_str(&format!(" {}", esc(description)));
    }
    if schema["items"].is_object() {
        out.push_str(&format!(" of {}", schema_html(&schema["items"])));
    }
    if let Some(properties) = schema["properties"].as_object() {
        let required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        out.push_str("<ul class=schema>");
        for (name, property) in properties {
            let mark = if required.contains(&name.as_str()) { " <strong>required</strong>" } else { "" };
            out.push_str(&format!("<li><code>{}</code>{mark}: {}</li>", esc(name), schema_html(property)));
        }
        out.push_str("</ul>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_and_schema_is_on_the_page_and_text_is_escaped() {
        let doc = super::super::openapi::document();
        let html = render(&doc);
        for (method, path, _) in super::super::openapi::routes() {
            assert!(html.contains(&format!("id=\"{}\"", anchor(method, path))), "{method} {path} missing");
        }
        assert!(html.contains("id=\"schema-Registration\""));
        assert!(!html.contains("<script"), "the page has no script");
        let hostile = serde_json::json!({"info": {"title": "<script>x</script>"}, "paths": {}});
        assert!(render(&hostile).contains("&lt;script&gt;x&lt;/script&gt;"));
    }
}
