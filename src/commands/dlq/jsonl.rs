//! The line `dlq export` writes for one dead letter, and `dlq import` reads
//! back: a JSON object that gives back the very same body, properties and
//! headers.
//!
//! ```json
//! {"body":"{\"order_id\":…}","properties":{"content_type":"application/json","delivery_mode":2},
//!  "headers":{"x-error-kind":{"longstr":"malformed"},"x-attempts":{"i64":1}}}
//! ```
//! - `body` is the body as text when it is valid UTF-8; otherwise the line
//!   has `body_base64` (standard alphabet, padded) instead.
//! - `properties`: every property that is set, named as in lapin
//!   (`content_type`, `message_id`, `timestamp`, `kind` for `type` …), but
//!   the headers.
//! - `headers`: absent when the message has no header table. Each value is
//!   an object with one key naming its AMQP type, so that an `i64` stays an
//!   `i64`: `bool`, `i8`, `u8`, `i16`, `u16`, `i32`, `u32`, `i64`, `f32`,
//!   `f64` (or `f32_bits`/`f64_bits` for a value JSON cannot hold, like
//!   NaN), `decimal` (`{"scale","value"}`), `shortstr`, `longstr` (or
//!   `longstr_base64` when not UTF-8), `array`, `timestamp`, `table`,
//!   `bytes` (base64) and `void`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldTable};
use serde_json::{Map, Value, json};

/// A line that is not one `dlq export` writes.
#[derive(Debug, thiserror::Error)]
#[error("not a dead letter written by `dlq export`: {0}")]
pub struct BadLine(String);

fn bad(what: impl Into<String>) -> BadLine {
    BadLine(what.into())
}

/// The line (without its newline) for a message with `properties`, but
/// `headers` in place of their header table.
pub fn encode(
    body: &[u8],
    properties: &BasicProperties,
    headers: Option<&FieldTable>,
) -> Result<String, BadLine> {
    let mut line = Map::new();
    match std::str::from_utf8(body) {
        Ok(text) => line.insert("body".into(), Value::from(text)),
        Err(_) => line.insert("body_base64".into(), Value::from(STANDARD.encode(body))),
    };
    let mut shown = serde_json::to_value(properties).map_err(|e| bad(e.to_string()))?;
    if let Value::Object(fields) = &mut shown {
        fields.retain(|name, value| name != "headers" && !value.is_null());
    }
    line.insert("properties".into(), shown);
    if let Some(headers) = headers {
        line.insert("headers".into(), table(headers));
    }
    serde_json::to_string(&line).map_err(|e| bad(e.to_string()))
}

/// The body and properties a line describes.
pub fn decode(line: &str) -> Result<(Vec<u8>, BasicProperties), BadLine> {
    let line: Map<String, Value> = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    let body = match (line.get("body"), line.get("body_base64")) {
        (Some(Value::String(text)), None) => text.as_bytes().to_vec(),
        (None, Some(Value::String(encoded))) => base64(encoded)?,
        _ => return Err(bad("exactly one of body and body_base64, a string")),
    };
    let shown = line.get("properties").cloned().unwrap_or_else(|| json!({}));
    let mut properties: BasicProperties =
        serde_json::from_value(shown).map_err(|e| bad(format!("properties: {e}")))?;
    if let Some(headers) = line.get("headers") {
        let AMQPValue::FieldTable(headers) = value_of_table(headers)? else {
            return Err(bad("headers: not a table"));
        };
        properties = properties.with_headers(headers);
    }
    Ok((body, properties))
}

fn table(table: &FieldTable) -> Value {
    let entries: Map<String, Value> = table
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), typed(value)))
        .collect();
    Value::Object(entries)
}

fn typed(value: &AMQPValue) -> Value {
    let (tag, shown) = match value {
        AMQPValue::Boolean(b) => ("bool", json!(b)),
        AMQPValue::ShortShortInt(n) => ("i8", json!(n)),
        AMQPValue::ShortShortUInt(n) => ("u8", json!(n)),
        AMQPValue::ShortInt(n) => ("i16", json!(n)),
        AMQPValue::ShortUInt(n) => ("u16", json!(n)),
        AMQPValue::LongInt(n) => ("i32", json!(n)),
        AMQPValue::LongUInt(n) => ("u32", json!(n)),
        AMQPValue::LongLongInt(n) => ("i64", json!(n)),
        AMQPValue::Float(x) if x.is_finite() => ("f32", json!(x)),
        AMQPValue::Float(x) => ("f32_bits", json!(x.to_bits())),
        AMQPValue::Double(x) if x.is_finite() => ("f64", json!(x)),
        AMQPValue::Double(x) => ("f64_bits", json!(x.to_bits())),
        AMQPValue::DecimalValue(d) => ("decimal", json!({"scale": d.scale, "value": d.value})),
        AMQPValue::ShortString(s) => ("shortstr", json!(s.as_str())),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => ("longstr", json!(text)),
            Err(_) => ("longstr_base64", json!(STANDARD.encode(s.as_bytes()))),
        },
        AMQPValue::FieldArray(values) => (
            "array",
            Value::Array(values.as_slice().iter().map(typed).collect()),
        ),
        AMQPValue::Timestamp(t) => ("timestamp", json!(t)),
        AMQPValue::FieldTable(inner) => ("table", table(inner)),
        AMQPValue::ByteArray(bytes) => ("bytes", json!(STANDARD.encode(bytes.as_slice()))),
        AMQPValue::Void => ("void", Value::Null),
    };
    json!({ tag: shown })
}

fn value_of_table(shown: &Value) -> Result<AMQPValue, BadLine> {
    let Value::Object(entries) = shown else {
        return Err(bad("a table must be an object"));
    };
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(name.as_str().into(), value_of(value)?);
    }
    Ok(AMQPValue::FieldTable(table))
}

fn value_of(shown: &Value) -> Result<AMQPValue, BadLine> {
    let Some((tag, inner)) = shown.as_object().and_then(|one| {
        let mut entries = one.iter();
        match (entries.next(), entries.next()) {
            (Some(entry), None) => Some(entry),
            _ => None,
        }
    }) else {
        return Err(bad(format!(
            "a header value must be {{\"type\": value}}: {shown}"
        )));
    };
    let int = || inner.as_i64().ok_or_else(|| bad(format!("{tag}: {inner}")));
    let uint = || inner.as_u64().ok_or_else(|| bad(format!("{tag}: {inner}")));
    let narrow = |_| bad(format!("{tag}: {inner} is out of range"));
    let text = || inner.as_str().ok_or_else(|| bad(format!("{tag}: {inner}")));
    Ok(match tag.as_str() {
        "bool" => AMQPValue::Boolean(inner.as_bool().ok_or_else(|| bad("bool"))?),
        "i8" => AMQPValue::ShortShortInt(i8::try_from(int()?).map_err(narrow)?),
        "u8" => AMQPValue::ShortShortUInt(u8::try_from(uint()?).map_err(narrow)?),
        "i16" => AMQPValue::ShortInt(i16::try_from(int()?).map_err(narrow)?),
        "u16" => AMQPValue::ShortUInt(u16::try_from(uint()?).map_err(narrow)?),
        "i32" => AMQPValue::LongInt(i32::try_from(int()?).map_err(narrow)?),
        "u32" => AMQPValue::LongUInt(u32::try_from(uint()?).map_err(narrow)?),
        "i64" => AMQPValue::LongLongInt(int()?),
        // JSON keeps the shortest text that reads back as the same f32.
        #[allow(clippy::cast_possible_truncation)]
        "f32" => AMQPValue::Float(inner.as_f64().ok_or_else(|| bad("f32"))? as f32),
        "f32_bits" => AMQPValue::Float(f32::from_bits(u32::try_from(uint()?).map_err(narrow)?)),
        "f64" => AMQPValue::Double(inner.as_f64().ok_or_else(|| bad("f64"))?),
        "f64_bits" => AMQPValue::Double(f64::from_bits(uint()?)),
        "decimal" => {
            let part = |name: &str| inner.get(name).and_then(Value::as_u64);
            let scale = part("scale").and_then(|s| u8::try_from(s).ok());
            let value = part("value").and_then(|v| u32::try_from(v).ok());
            let (Some(scale), Some(value)) = (scale, value) else {
                return Err(bad(format!("decimal: {inner}")));
            };
            AMQPValue::DecimalValue(DecimalValue { scale, value })
        }
        "shortstr" => AMQPValue::ShortString(text()?.into()),
        "longstr" => AMQPValue::LongString(text()?.into()),
        "longstr_base64" => AMQPValue::LongString(base64(text()?)?.into()),
        "array" => {
            let items = inner.as_array().ok_or_else(|| bad("array"))?;
            let values: Result<Vec<_>, _> = items.iter().map(value_of).collect();
            AMQPValue::FieldArray(values?.into())
        }
        "timestamp" => AMQPValue::Timestamp(uint()?),
        "table" => value_of_table(inner)?,
        "bytes" => AMQPValue::ByteArray(base64(text()?)?.into()),
        "void" => AMQPValue::Void,
        other => return Err(bad(format!("unknown header type {other}"))),
    })
}

fn base64(encoded: &str) -> Result<Vec<u8>, BadLine> {
    STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("base64: {e}")))
}

#[cfg(test)]
#[path = "jsonl_tests.rs"]
mod tests;
