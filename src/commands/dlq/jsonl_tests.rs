//! Every kind of body, property and header value survives a line.

#![allow(clippy::unwrap_used)]

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldTable};

use super::{decode, encode};
use crate::adapters::amqp::headers::every_property;

fn every_header() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("queue".into(), AMQPValue::LongString("q.retry.1".into()));
    inner.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
    let mut headers = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-300)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-70_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(i64::MIN)),
        ("f32", AMQPValue::Float(0.1)),
        ("f32nan", AMQPValue::Float(f32::NAN)),
        ("f64", AMQPValue::Double(-1.0e300)),
        ("f64inf", AMQPValue::Double(f64::INFINITY)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12_345,
            }),
        ),
        ("short", AMQPValue::ShortString("court".into())),
        ("long", AMQPValue::LongString("é \" \n".into())),
        (
            "binary",
            AMQPValue::LongString(vec![0xff, 0x00, 0xfe].into()),
        ),
        (
            "array",
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(inner.clone())].into()),
        ),
        ("time", AMQPValue::Timestamp(42)),
        ("table", AMQPValue::FieldTable(inner)),
        ("bytes", AMQPValue::ByteArray(vec![1, 2, 255].into())),
        ("void", AMQPValue::Void),
    ];
    for (name, value) in values {
        headers.insert(name.into(), value);
    }
    headers
}

fn all_properties() -> BasicProperties {
    every_property(every_header()).with_expiration("60000".into())
}

/// Equal, NaN included: compares the wire form.
fn same(a: &BasicProperties, b: &BasicProperties) -> bool {
    format!("{a:?}").replace("NaN", "nan") == format!("{b:?}").replace("NaN", "nan")
        && a.headers().as_ref().map(|h| h.inner().len())
            == b.headers().as_ref().map(|h| h.inner().len())
}

#[test]
fn every_property_and_header_type_comes_back_the_same() {
    let properties = all_properties();
    let line = encode(
        b"{\"order_id\":\"x\"}",
        &properties,
        properties.headers().as_ref(),
    )
    .unwrap();
    assert!(!line.contains('\n'));
    let (body, back) = decode(&line).unwrap();
    assert_eq!(body, b"{\"order_id\":\"x\"}");
    assert!(same(&back, &properties), "{back:?}");
    assert_eq!(
        encode(&body, &back, back.headers().as_ref()).unwrap(),
        line,
        "a second round is identical"
    );
}

#[test]
fn a_body_that_is_not_utf8_goes_in_base64() {
    let body = [0x00, 0xff, 0x80, b'a'];
    let line = encode(&body, &BasicProperties::default(), None).unwrap();
    assert!(line.contains("body_base64"), "{line}");
    let (back, properties) = decode(&line).unwrap();
    assert_eq!(back, body);
    assert_eq!(properties, BasicProperties::default(), "no header table");
}

#[test]
fn an_empty_header_table_stays_a_table() {
    let properties = BasicProperties::default().with_headers(FieldTable::default());
    let (_, back) =
        decode(&encode(b"", &properties, properties.headers().as_ref()).unwrap()).unwrap();
    assert_eq!(back, properties);
}

#[test]
fn a_line_of_something_else_is_refused() {
    for line in [
        "",
        "{}",
        r#"{"body":"a","body_base64":"YQ=="}"#,
        r#"{"body":"a","headers":{"x":{"i8":300}}}"#,
        r#"{"body":"a","headers":{"x":{"i8":1,"u8":1}}}"#,
        r#"{"body":"a","headers":{"x":{"wat":1}}}"#,
    ] {
        assert!(decode(line).is_err(), "{line}");
    }
}
