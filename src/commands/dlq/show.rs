//! `dlq show <order_id>`: everything about the dead letters of one order
//! (there may be more than one: an order published twice, or replayed and
//! dead-lettered again), which stay in the queue.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use time::format_description::well_known::Rfc3339;

use super::letter::{DeadLetter, Filter};
use super::{Context, DlqError, Reader};
use crate::cli::FilterArgs;
use crate::commands::output::say;

pub async fn run(context: &Context, order_id: &str) -> Result<(), DlqError> {
    let filter = Filter::new(FilterArgs {
        order_id: Some(order_id.to_owned()),
        ..FilterArgs::default()
    });
    let mut reader = Reader::open(context, "order-processor dlq show").await?;
    let found = find(&mut reader, &filter).await;
    let queue = reader.queue().to_owned();
    reader.close().await;
    let found = found?;
    if found.is_empty() {
        let order_id = order_id.to_owned();
        return Err(DlqError::NotFound { order_id, queue });
    }
    for (n, letter) in found.iter().enumerate() {
        if n > 0 {
            say(format_args!(""));
        }
        print(letter);
    }
    Ok(())
}

async fn find(reader: &mut Reader, filter: &Filter) -> Result<Vec<DeadLetter>, DlqError> {
    let mut found = Vec::new();
    while let Some(letter) = reader.next().await? {
        if filter.matches(&letter) {
            found.push(letter);
        }
    }
    Ok(found)
}

fn print(letter: &DeadLetter) {
    let or_dash = |value: Option<&str>| value.unwrap_or("-").to_owned();
    say(format_args!(
        "order_id:  {}",
        or_dash(letter.order_id().as_deref())
    ));
    say(format_args!("kind:      {}", letter.kind()));
    say(format_args!("reason:    {}", letter.reason()));
    let attempts = letter.attempts().map(|n| n.to_string());
    say(format_args!("attempts:  {}", or_dash(attempts.as_deref())));
    say(format_args!("trace_id:  {}", or_dash(letter.trace_id())));
    let time = letter.time().map(|seconds| {
        let rfc3339 = i64::try_from(seconds)
            .ok()
            .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok())
            .and_then(|time| time.format(&Rfc3339).ok());
        rfc3339.unwrap_or_else(|| seconds.to_string())
    });
    say(format_args!("time:      {}", or_dash(time.as_deref())));
    say(format_args!("properties:"));
    for (name, value) in properties(&letter.properties) {
        say(format_args!("  {name}: {value}"));
    }
    say(format_args!("headers:"));
    if let Some(headers) = letter.properties.headers() {
        for (name, value) in headers.inner() {
            say(format_args!("  {name}: {}", shown(value)));
        }
    }
    say(format_args!("body ({} bytes):", letter.body.len()));
    say(format_args!("{}", String::from_utf8_lossy(&letter.body)));
}

/// Every property that is set, but the headers.
fn properties(properties: &BasicProperties) -> Vec<(&'static str, String)> {
    let text = |value: &Option<lapin::types::ShortString>| value.as_ref().map(|v| v.to_string());
    let number = |value: Option<u64>| value.map(|v| v.to_string());
    [
        ("content_type", text(properties.content_type())),
        ("content_encoding", text(properties.content_encoding())),
        (
            "delivery_mode",
            number(properties.delivery_mode().map(u64::from)),
        ),
        ("priority", number(properties.priority().map(u64::from))),
        ("correlation_id", text(properties.correlation_id())),
        ("reply_to", text(properties.reply_to())),
        ("expiration", text(properties.expiration())),
        ("message_id", text(properties.message_id())),
        ("timestamp", number(*properties.timestamp())),
        ("type", text(properties.kind())),
        ("user_id", text(properties.user_id())),
        ("app_id", text(properties.app_id())),
        ("cluster_id", text(properties.cluster_id())),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect()
}

/// A header value as an operator reads it: text as text, tables and arrays
/// spelled out, anything else in its AMQP form.
fn shown(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.to_string(),
        AMQPValue::FieldArray(values) => {
            let items: Vec<String> = values.as_slice().iter().map(shown).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(table) => table_shown(table),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn table_shown(table: &FieldTable) -> String {
    let entries: Vec<String> = table
        .inner()
        .iter()
        .map(|(name, value)| format!("{name}: {}", shown(value)))
        .collect();
    format!("{{{}}}", entries.join(", "))
}
