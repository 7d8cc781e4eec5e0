//! No committed credentials: secrets only through `secretKeyRef`, placeholders in examples.

use crate::deploy_manifests::yaml::{Doc, at, string_map};

pub fn looks_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| k.contains(w))
}

fn is_placeholder(value: &str) -> bool {
    value.contains("CHANGE_ME") || (value.starts_with('<') && value.ends_with('>'))
}

/// The password of a `scheme://user:password@host/...` URL.
pub fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo.split_once(':')?.1)
}

pub fn check_credential(origin: &str, key: &str, value: &str, dev: bool, errors: &mut Vec<String>) {
    if let Some(password) = url_password(value) {
        // "guest" is RabbitMQ's public default account, tolerated for the dev overlay only.
        let tolerated = is_placeholder(password) || (dev && password == "guest");
        if !tolerated {
            errors.push(format!(
                "{origin}: {key} embeds a password that is not a CHANGE_ME placeholder; real credentials must not be committed"
            ));
        }
    } else if looks_secret_key(key) && !is_placeholder(value) {
        errors.push(format!(
            "{origin}: {key} holds a value that is not a CHANGE_ME placeholder"
        ));
    }
}

pub fn check_secret(doc: &Doc, errors: &mut Vec<String>) {
    let id = doc.id();
    for (key, val) in string_map(at(&doc.value, &["stringData"])) {
        check_credential(&id, &key, &val, doc.dev, errors);
    }
    for (key, val) in string_map(at(&doc.value, &["data"])) {
        match base64_decode(&val).and_then(|b| String::from_utf8(b).ok()) {
            Some(text) => check_credential(&id, &key, &text, doc.dev, errors),
            None => errors.push(format!("{id}: data.{key} is not base64 UTF-8")),
        }
    }
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let sextet = u32::try_from(ALPHABET.iter().position(|a| *a == byte)?).ok()?;
        acc = (acc.checked_shl(6)? | sextet) & 0x00FF_FFFF;
        bits = bits.checked_add(6)?;
        if bits >= 8 {
            bits = bits.checked_sub(8)?;
            out.push(u8::try_from(acc.checked_shr(bits)? & 0xFF).ok()?);
        }
    }
    Some(out)
}
