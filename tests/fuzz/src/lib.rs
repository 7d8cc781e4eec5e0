//! A reference model of the order contract (CONTRACT.md §3 and §5) for the
//! `decode` fuzz target to compare `Order::parse` against.
//!
//! It is written separately from the decoder on purpose and shares none of
//! its code: it reads JSON with its own small parser into a tree that keeps
//! every key (so a repeated field is visible) and every number as its source
//! text (so `1e400` or a 30-digit price is still a number), then applies the
//! contract's rules to the tree, in the order the decoder promises to report
//! them. Only two questions are delegated to the libraries the decoder also
//! uses, because re-implementing them would test nothing of ours: which
//! three-letter codes are active currencies (the caller passes that in) and
//! what RFC 3339 accepts (`time`).
//!
//! The model abstains ([`Expected::Unknown`]) on bodies nested deeper than
//! [`MAX_DEPTH`], which only the decoder's own tests judge.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest accepted body, in bytes (CONTRACT.md §3: at most 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Deeper bodies are not judged by the model.
pub const MAX_DEPTH: usize = 100;

/// A JSON value as the model reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, grammar-checked but not converted.
    Number(String),
    Str(JsonStr),
    Array(Vec<Json>),
    /// Members in document order, repeated keys included.
    Object(Vec<(JsonStr, Json)>),
}

/// A JSON string. `\uD800`-style escapes that are not a surrogate pair are
/// legal JSON, but they have no UTF-8 form: they make `lone` true (and
/// become U+FFFD in `text`). serde_json refuses them in any string it
/// decodes (keys and known fields) and skips them in ignored values.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonStr {
    pub text: String,
    pub lone: bool,
}

/// What the model reads from a body that is UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Json(Json),
    /// Not one JSON value (syntax error, trailing text, empty body...).
    NotJson,
    /// Nested deeper than [`MAX_DEPTH`]: no verdict.
    TooDeep,
}

/// Reads `text` as exactly one JSON value (RFC 8259) with surrounding
/// whitespace.
pub fn read_json(text: &str) -> Read {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let value = match parser.value(0) {
        Ok(value) => value,
        Err(Stop::Syntax) => return Read::NotJson,
        Err(Stop::TooDeep) => return Read::TooDeep,
    };
    parser.skip_ws();
    if parser.pos == parser.bytes.len() {
        Read::Json(value)
    } else {
        Read::NotJson
    }
}

enum Stop {
    Syntax,
    TooDeep,
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, Stop> {
        let byte = self.peek().ok_or(Stop::Syntax)?;
        self.pos += 1;
        Ok(byte)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Json) -> Result<Json, Stop> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(Stop::Syntax)
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, Stop> {
        self.skip_ws();
        match self.peek().ok_or(Stop::Syntax)? {
            b'{' | b'[' if depth >= MAX_DEPTH => Err(Stop::TooDeep),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Json::Str),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'n' => self.literal(b"null", Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Stop::Syntax),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, Stop> {
        self.pos += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(Stop::Syntax);
            }
            let key = self.string()?;
            self.skip_ws();
            if self.next()? != b':' {
                return Err(Stop::Syntax);
            }
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(Json::Object(members)),
                _ => return Err(Stop::Syntax),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, Stop> {
        self.pos += 1; // '['
        let mut elements = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(elements));
        }
        loop {
            elements.push(self.value(depth)?);
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b']' => return Ok(Json::Array(elements)),
                _ => return Err(Stop::Syntax),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Json, Stop> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => _ = self.digits(),
            _ => return Err(Stop::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Stop::Syntax);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Stop::Syntax);
            }
        }
        // A digit right after the number (`01`) is a syntax error, which
        // the caller sees as a missing ',' or as trailing text.
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| Stop::Syntax)?;
        Ok(Json::Number(text.to_owned()))
    }

    fn hex4(&mut self) -> Result<u16, Stop> {
        let mut value = 0u16;
        for _ in 0..4 {
            let digit = match self.next()? {
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'f' => b - b'a' + 10,
                b @ b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(Stop::Syntax),
            };
            value = value * 16 + u16::from(digit);
        }
        Ok(value)
    }

    fn string(&mut self) -> Result<JsonStr, Stop> {
        self.pos += 1; // '"'
        let mut out = Vec::new();
        let mut lone = false;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => match self.next()? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let unit = self.hex4()?;
                        let c = match unit {
                            0xD800..=0xDBFF => {
                                // A pair only if `\uDC00`-`\uDFFF` follows.
                                let rest = &self.bytes[self.pos..];
                                let low = if rest.starts_with(b"\\u") {
                                    let save = self.pos;
                                    self.pos += 2;
                                    match self.hex4()? {
                                        low @ 0xDC00..=0xDFFF => Some(low),
                                        _ => {
                                            self.pos = save;
                                            None
                                        }
                                    }
                                } else {
                                    None
                                };
                                low.and_then(|low| {
                                    let high = u32::from(unit - 0xD800);
                                    let low = u32::from(low - 0xDC00);
                                    char::from_u32(0x10000 + (high << 10) + low)
                                })
                            }
                            _ => char::from_u32(u32::from(unit)),
                        };
                        let c = c.unwrap_or_else(|| {
                            lone = true;
                            char::REPLACEMENT_CHARACTER
                        });
                        let mut buf = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(Stop::Syntax),
                },
                0x00..=0x1f => return Err(Stop::Syntax),
                byte => out.push(byte),
            }
        }
        // Only whole UTF-8 sequences of a `&str` and whole escapes went in.
        let text = String::from_utf8(out).map_err(|_| Stop::Syntax)?;
        Ok(JsonStr { text, lone })
    }
}

/// A rule of CONTRACT.md §3 that a body breaks, in the decoder's terms.
/// Item indices are 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    OrderId,
    CustomerId,
    Currency,
    ItemCount(usize),
    Quantity(usize),
    UnitPrice(usize),
    TotalOverflow,
    TotalOutOfRange,
    PaymentToken,
    CreatedAt,
}

/// The model's verdict on a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// No verdict (see [`MAX_DEPTH`]).
    Unknown,
    /// Longer than [`MAX_BODY`].
    TooLarge,
    NotUtf8,
    /// Not one JSON value.
    NotJson,
    /// JSON, but not an object.
    NotAnObject,
    /// An object without the order's shape: a required field missing, a
    /// known field repeated or of the wrong JSON type, a string that cannot
    /// be decoded (lone surrogate) where a string is decoded.
    Malformed,
    /// The shape of an order, with the first broken rule in contract order.
    Invalid(Broken),
    Valid(ModelOrder),
}

impl Expected {
    /// Whether the contract dead-letters it as `malformed`.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::TooLarge | Self::NotUtf8 | Self::NotJson | Self::NotAnObject | Self::Malformed
        )
    }
}

/// A valid order as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOrder {
    /// Lower-case hyphenated.
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    /// (sku, quantity, unit price in minor units)
    pub items: Vec<(String, u32, u64)>,
    pub total_minor: u64,
    pub payment_token: String,
    pub created_at: Option<OffsetDateTime>,
}

/// Every string the top-level object gives to `key` (more than one if the
/// key is repeated); for looking for secrets in error text.
pub fn top_level_strings<'a>(json: &'a Json, key: &str) -> Vec<&'a str> {
    match json {
        Json::Object(members) => members
            .iter()
            .filter(|(k, _)| k.text == key)
            .filter_map(|(_, v)| match v {
                Json::Str(s) => Some(s.text.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The verdict of CONTRACT.md §3 and §5 on one message body, and the body
/// as JSON when it is JSON. `is_currency` says whether a three-letter
/// upper-case code is active.
pub fn expect(body: &[u8], is_currency: &dyn Fn(&str) -> bool) -> (Expected, Option<Json>) {
    if body.len() > MAX_BODY {
        return (Expected::TooLarge, None);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return (Expected::NotUtf8, None);
    };
    let json = match read_json(text) {
        Read::Json(json) => json,
        Read::NotJson => return (Expected::NotJson, None),
        Read::TooDeep => return (Expected::Unknown, None),
    };
    let expected = match &json {
        Json::Object(members) => match shape(members) {
            Some(wire) => match validate(&wire, is_currency) {
                Ok(order) => Expected::Valid(order),
                Err(broken) => Expected::Invalid(broken),
            },
            None => Expected::Malformed,
        },
        _ => Expected::NotAnObject,
    };
    (expected, Some(json))
}

/// The fields of an order body once its shape is known to be right.
struct Wire<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    currency: &'a str,
    items: Vec<WireItem<'a>>,
    payment_token: &'a str,
    created_at: Option<&'a str>,
}

struct WireItem<'a> {
    sku: &'a str,
    quantity: &'a str,
    unit_price_minor: &'a str,
}

/// Looks up `names` in an object that the decoder reads as a struct:
/// every key must be decodable, and a known key may appear once.
fn fields<'a, const N: usize>(
    members: &'a [(JsonStr, Json)],
    names: [&str; N],
) -> Option<[Option<&'a Json>; N]> {
    let mut found = [None; N];
    for (key, value) in members {
        if key.lone {
            return None;
        }
        if let Some(index) = names.iter().position(|name| *name == key.text)
            && found[index].replace(value).is_some()
        {
            return None; // repeated
        }
    }
    Some(found)
}

fn decoded_str(value: Option<&Json>) -> Option<&str> {
    match value? {
        Json::Str(s) if !s.lone => Some(&s.text),
        _ => None,
    }
}

fn number(value: Option<&Json>) -> Option<&str> {
    match value? {
        Json::Number(text) => Some(text),
        _ => None,
    }
}

/// `None` unless the object has the shape of an order (then malformed).
fn shape(members: &[(JsonStr, Json)]) -> Option<Wire<'_>> {
    let [
        order_id,
        customer_id,
        currency,
        items,
        payment_token,
        created_at,
    ] = fields(
        members,
        [
            "order_id",
            "customer_id",
            "currency",
            "items",
            "payment_token",
            "created_at",
        ],
    )?;
    let Json::Array(items) = items? else {
        return None;
    };
    let items = items
        .iter()
        .map(|item| {
            let Json::Object(members) = item else {
                return None;
            };
            let [sku, quantity, unit_price_minor] =
                fields(members, ["sku", "quantity", "unit_price_minor"])?;
            Some(WireItem {
                sku: decoded_str(sku)?,
                quantity: number(quantity)?,
                unit_price_minor: number(unit_price_minor)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let created_at = match created_at {
        None | Some(Json::Null) => None,
        Some(value) => Some(decoded_str(Some(value))?),
    };
    Some(Wire {
        order_id: decoded_str(order_id)?,
        customer_id: decoded_str(customer_id)?,
        currency: decoded_str(currency)?,
        items,
        payment_token: decoded_str(payment_token)?,
        created_at,
    })
}

/// A JSON number that is a non-negative integer written without fraction
/// or exponent, as a u64 ("integers only": `2.0`, `2e0` and `-0` are not).
fn integer(text: &str) -> Option<u64> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn validate(wire: &Wire<'_>, is_currency: &dyn Fn(&str) -> bool) -> Result<ModelOrder, Broken> {
    if !is_hyphenated_uuid(wire.order_id) {
        return Err(Broken::OrderId);
    }
    let customer_ok = (1..=64).contains(&wire.customer_id.len())
        && wire
            .customer_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !customer_ok {
        return Err(Broken::CustomerId);
    }
    let currency_ok = wire.currency.len() == 3
        && wire.currency.bytes().all(|b| b.is_ascii_uppercase())
        && is_currency(wire.currency);
    if !currency_ok {
        return Err(Broken::Currency);
    }
    let count = wire.items.len();
    if !(1..=100).contains(&count) {
        return Err(Broken::ItemCount(count));
    }
    let mut items = Vec::with_capacity(count);
    let mut total: u128 = 0;
    for (index, item) in wire.items.iter().enumerate() {
        let quantity = integer(item.quantity)
            .filter(|q| (1..=10_000).contains(q))
            .ok_or(Broken::Quantity(index))?;
        let price = integer(item.unit_price_minor).ok_or(Broken::UnitPrice(index))?;
        total += u128::from(quantity) * u128::from(price);
        if total > u128::from(u64::MAX) {
            return Err(Broken::TotalOverflow);
        }
        let quantity = u32::try_from(quantity).map_err(|_| Broken::Quantity(index))?;
        items.push((item.sku.to_owned(), quantity, price));
    }
    if !(1..=1_000_000_000_000).contains(&total) {
        return Err(Broken::TotalOutOfRange);
    }
    let token_ok = (1..=255).contains(&wire.payment_token.len())
        && wire
            .payment_token
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b));
    if !token_ok {
        return Err(Broken::PaymentToken);
    }
    let created_at = match wire.created_at {
        None => None,
        Some(text) => Some(OffsetDateTime::parse(text, &Rfc3339).map_err(|_| Broken::CreatedAt)?),
    };
    Ok(ModelOrder {
        order_id: wire.order_id.to_ascii_lowercase(),
        customer_id: wire.customer_id.to_owned(),
        currency: wire.currency.to_owned(),
        items,
        total_minor: u64::try_from(total).map_err(|_| Broken::TotalOverflow)?,
        payment_token: wire.payment_token.to_owned(),
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_currency(code: &str) -> bool {
        ["EUR", "JPY", "USD", "XTS"].contains(&code)
    }

    const GOOD: &str = r#"{
      "order_id": "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10",
      "customer_id": "cus_42",
      "currency": "EUR",
      "items": [{ "sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999 }],
      "payment_token": "tok_visa",
      "created_at": "2026-11-24T10:00:00Z"
    }"#;

    fn verdict(body: &str) -> Expected {
        expect(body.as_bytes(), &any_currency).0
    }

    #[test]
    fn reads_json() {
        assert!(matches!(
            read_json(" [1, -0.5e+3, \"a\\u00e9\\ud83d\\ude00\", true, null, {}] "),
            Read::Json(_)
        ));
        for bad in [
            "",
            "01",
            "1.",
            "-",
            "[1,]",
            "{\"a\"}",
            "\"\u{1}\"",
            "\"\\x\"",
            "nul",
            "1 2",
            "{'a':1}",
        ] {
            assert_eq!(read_json(bad), Read::NotJson, "{bad:?}");
        }
        let Read::Json(Json::Str(s)) = read_json("\"\\ud800x\"") else {
            panic!("a lone surrogate is JSON");
        };
        assert!(s.lone);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(read_json(&deep), Read::TooDeep);
    }

    #[test]
    fn judges_the_contract_sample_and_its_variants() {
        let Expected::Valid(order) = verdict(GOOD) else {
            panic!("the sample is valid");
        };
        assert_eq!(order.total_minor, 3998);
        assert_eq!(
            verdict(&GOOD.replace("EUR", "eur")),
            Expected::Invalid(Broken::Currency)
        );
        assert_eq!(
            verdict(&GOOD.replace("\"quantity\": 2", "\"quantity\": 1e400")),
            Expected::Invalid(Broken::Quantity(0))
        );
        assert_eq!(
            verdict(&GOOD.replace("\"quantity\": 2", "\"quantity\": \"2\"")),
            Expected::Malformed
        );
        assert_eq!(
            verdict(&GOOD.replace("\"payment_token\"", "\"x\"")),
            Expected::Malformed
        );
        assert_eq!(
            verdict(&GOOD.replace("{ \"sku\"", "{ \"sku\": \"a\", \"sku\"")),
            Expected::Malformed
        );
        assert_eq!(
            verdict(&GOOD.replace("\"cus_42\"", "\"cus_42\", \"x\": \"\\udc00\"")),
            Expected::Valid(order)
        );
        assert_eq!(
            verdict(&GOOD.replace("\"created_at\"", "\"\\udc00\"")),
            Expected::Malformed
        );
        assert_eq!(verdict("[]"), Expected::NotAnObject);
        assert_eq!(verdict("{"), Expected::NotJson);
    }

    #[test]
    fn the_seeds_are_valid_orders() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let mut count = 0;
        for entry in std::fs::read_dir(seeds).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            let verdict = expect(&body, &any_currency).0;
            assert!(
                matches!(verdict, Expected::Valid(_)),
                "{}: {verdict:?}",
                path.display()
            );
            count += 1;
        }
        assert!(count >= 4);
    }

    /// The model against the kinds the hostile corpus is named after
    /// (`malformed--…` or `invalid--…`, see tests/it/hostile.rs).
    #[test]
    fn the_hostile_corpus_is_judged_as_named() {
        let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hostile");
        let is_currency = |code: &str| order_processor::domain::Currency::parse(code).is_ok();
        let mut judged = 0;
        for entry in std::fs::read_dir(hostile).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let verdict = expect(&std::fs::read(&path).unwrap(), &is_currency).0;
            let agrees = match name.split_once("--").map(|(kind, _)| kind) {
                _ if verdict == Expected::Unknown => continue,
                Some("malformed") => verdict.is_malformed(),
                Some("invalid") => matches!(verdict, Expected::Invalid(_)),
                _ => panic!("{name}: not named by kind"),
            };
            assert!(agrees, "{name}: {verdict:?}");
            judged += 1;
        }
        assert!(judged >= 100, "{judged}");
    }
}
