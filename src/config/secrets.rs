//! Values that must never be shown: connection strings ([`Secret`]) and the
//! payment provider's API key ([`ApiKey`]). `Debug`, `Display` and `Serialize`
//! print them redacted, so neither a log line, a panic message nor
//! `check-config` can carry a password or a key; the one place that uses the
//! real value calls `expose`.

use std::fmt;

use serde::{Serialize, Serializer};

use super::ConfigError;

/// A configuration value that must never be shown. `Debug`, `Display` and
/// `Serialize` print it with its credentials replaced by `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(&self.0))
    }
}

/// Keeps the scheme, host, port and path of a URL, so an operator can see
/// where it points, and hides the password, an HTTP URL's user name, and the
/// whole query string (where drivers accept `password=` or `sslpassword=`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:[redacted]@{host}"),
            // An HTTP API takes a key as the user name (`https://sk_live_…@psp`);
            // a broker or database user name alone is no secret.
            None if scheme.starts_with("http") => format!("[redacted]@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = match tail.split_once('?') {
        Some((path, _query)) => format!("{path}?[redacted]"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{host}{path}")
}

/// The payment provider's API key, from `PAYMENT_API_KEY`, sent with every
/// charge as `Authorization: Bearer <key>`. Its only constructor checks that
/// it can go in that header as it is; every way of printing it shows
/// `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The variable it comes from, the name every error about it uses.
    pub const VARIABLE: &'static str = "PAYMENT_API_KEY";
    /// Keys are a few dozen characters; far longer is a file pasted by mistake.
    const MAX_LEN: usize = 4096;

    /// Checks the key without ever quoting it: 1 to 4096 visible ASCII
    /// characters (a bearer token has no spaces). An empty value is refused
    /// rather than taken as unset: an empty Secret in the deployment would
    /// otherwise send every charge without credentials, and every order would
    /// be dead-lettered as rejected (401).
    pub fn parse(value: String) -> Result<Self, ConfigError> {
        if value.is_empty() {
            return Err(ConfigError::new(
                Self::VARIABLE,
                "is set but empty (unset it, or give the provider's key)",
            ));
        }
        if value.len() > Self::MAX_LEN {
            return Err(ConfigError::new(
                Self::VARIABLE,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                Self::VARIABLE,
                "must be printable ASCII without spaces, line breaks or control characters",
            ));
        }
        Ok(Self(value))
    }

    /// The real key, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_in_every_shape() {
        assert_eq!(
            redact_url("postgres://u:p@h:5432/db"),
            "postgres://u:[redacted]@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("http://h:8081"), "http://h:8081");
        assert_eq!(
            redact_url("https://sk_live_123@psp.example/api"),
            "https://[redacted]@psp.example/api"
        );
        assert_eq!(
            redact_url("postgres://h/db?password=p"),
            "postgres://h/db?[redacted]"
        );
        assert_eq!(redact_url("not a url"), "[redacted]");
    }

    #[test]
    fn an_api_key_never_prints() {
        let key = ApiKey::parse("sk_live_hunter2".to_owned()).unwrap();
        assert_eq!(key.expose(), "sk_live_hunter2");
        let shown = format!("{key:?} {key} {}", serde_json::to_string(&key).unwrap());
        assert_eq!(shown, "[redacted] [redacted] \"[redacted]\"");
    }

    #[test]
    fn an_api_key_that_cannot_be_a_bearer_token_is_named_but_not_shown() {
        for bad in [
            "",
            "sk live",
            "sk_live_hunter2\n",
            "sk_\u{0}",
            "clé_hunter2",
        ] {
            let error = ApiKey::parse(bad.to_owned()).unwrap_err();
            assert_eq!(error.key, "PAYMENT_API_KEY", "{bad:?}");
            let line = error.to_string();
            assert!(!line.contains("hunter2") && !line.contains("sk"), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
        let long = "k".repeat(4097);
        assert_eq!(ApiKey::parse(long).unwrap_err().key, "PAYMENT_API_KEY");
    }
}
