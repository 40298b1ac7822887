//! One delivery to one forge's intake (`hoist::forge::receive`), as the route would pass it.
//!
//! The first byte chooses the delivery's shape; the rest is the body. Signed deliveries carry a
//! valid signature over the body, so the fuzzer reaches the payload parsers behind the check;
//! unsigned ones carry a wrong one. Property checked besides "no panic": a delivery whose
//! signature is wrong is never accepted.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hoist::forge::{Forge, push_headers, receive, sign};

const SECRET: &[u8] = b"fuzz-secret";

pub fn run(forge: Forge, data: &[u8]) {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let signed = shape & 1 == 1;
    let form = shape & 2 == 2;
    let mut headers = HeaderMap::new();
    for (name, value) in push_headers(forge, "fuzz-delivery") {
        insert(&mut headers, name, &value);
    }
    if shape & 4 == 4 {
        // Another event than a push: ping, create, delete, anything the body makes of it.
        let event = match shape >> 3 & 3 {
            0 => "ping",
            1 => "create",
            2 => "delete",
            _ => "Tag Push Hook",
        };
        let name = push_headers(forge, "x")[0].0;
        insert(&mut headers, name, event);
    }
    let content_type = if form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    insert(&mut headers, "Content-Type", content_type);
    let (sig_name, sig) = if signed {
        sign(forge, SECRET, body)
    } else {
        sign(forge, b"not-the-secret", body)
    };
    // A form body's signature covers the JSON inside for Gitea and Forgejo; the fuzzer then
    // only reaches the verified path when the body has no `payload` field, which is fine.
    insert(&mut headers, sig_name, &sig);
    let result = receive(forge, &headers, body, |_repo| Some(SECRET.to_vec()));
    if !signed {
        assert!(
            result.is_err(),
            "{forge:?}: a delivery signed with the wrong secret was accepted: {result:?}"
        );
    }
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}
