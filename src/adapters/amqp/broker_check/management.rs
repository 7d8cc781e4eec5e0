//! Reading the broker's settings from the RabbitMQ management HTTP API:
//! the version (`GET /api/overview`) and the work queue's arguments and
//! effective policy (`GET /api/queues/{vhost}/{name}`).
//!
//! The management plugin reports a queue's policy with its statistics,
//! which it gathers every few seconds: right after the queue was declared
//! the answer lacks `effective_policy_definition`, so it is asked again
//! until it has one. Nothing here ever shows the URL or its credentials:
//! errors name what failed, not where.

use std::str::FromStr as _;
use std::time::Duration;

use lapin::uri::AMQPUri;
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use super::findings::{Observed, QueueSettings, Version};
use crate::config::Secret;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the queue's first statistics.
const STATISTICS_WAIT: Duration = Duration::from_secs(30);
const STATISTICS_POLL: Duration = Duration::from_secs(1);
/// The largest answer read; a queue's is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// Why the settings could not be read. `Display` never shows the URL.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("amqp.management_url cannot take an API path")]
    InvalidUrl,
    #[error("AMQP_URL does not name a virtual host")]
    InvalidAmqpUrl,
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
    #[error("the management API did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("the management API could not be reached")]
    Unreachable(#[source] reqwest::Error),
    #[error(
        "the management API refused the credentials (status {0}); the user needs the `monitoring` or `management` tag"
    )]
    Unauthorized(u16),
    #[error(
        "the management API does not know the queue; does amqp.management_url point at the broker of AMQP_URL?"
    )]
    QueueNotFound,
    #[error("the management API answered with status {0}")]
    Status(u16),
    #[error("the management API answered with something that is not what RabbitMQ sends")]
    InvalidResponse,
    #[error(
        "the management API has not reported the queue's policy within {} s",
        STATISTICS_WAIT.as_secs()
    )]
    NoStatistics,
}

/// A client of one broker's management API.
pub struct Management {
    client: reqwest::Client,
    base: Url,
    /// Those of `AMQP_URL`, when the management URL carries none.
    credentials: Option<(String, String)>,
    vhost: String,
}

impl Management {
    /// `amqp_url` gives the virtual host, and the credentials when `url`
    /// has none.
    pub fn new(url: &Secret, amqp_url: &str) -> Result<Self, ManagementError> {
        let base = Url::parse(url.expose()).map_err(|_| ManagementError::InvalidUrl)?;
        if base.cannot_be_a_base() {
            return Err(ManagementError::InvalidUrl);
        }
        let amqp = AMQPUri::from_str(amqp_url).map_err(|_| ManagementError::InvalidAmqpUrl)?;
        let credentials = base.username().is_empty().then(|| {
            let user = amqp.authority.userinfo;
            (user.username, user.password)
        });
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // Credentials must not follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| ManagementError::Client(error.without_url()))?;
        Ok(Self {
            client,
            base,
            credentials,
            vhost: amqp.vhost,
        })
    }

    /// The broker's version and the settings of `queue`.
    pub async fn observe(&self, queue: &str) -> Result<Observed, ManagementError> {
        let overview = self.get(&["api", "overview"], "rabbitmq_version").await?;
        let version = overview
            .get("rabbitmq_version")
            .and_then(Value::as_str)
            .and_then(Version::parse);
        let settings = tokio::time::timeout(STATISTICS_WAIT, self.queue_settings(queue))
            .await
            .map_err(|_| ManagementError::NoStatistics)??;
        Ok(Observed {
            version,
            queue: Some(settings),
        })
    }

    async fn queue_settings(&self, queue: &str) -> Result<QueueSettings, ManagementError> {
        loop {
            let answer = self
                .get(
                    &["api", "queues", &self.vhost, queue],
                    "arguments,effective_policy_definition",
                )
                .await
                .map_err(|error| match error {
                    ManagementError::Status(404) => ManagementError::QueueNotFound,
                    other => other,
                })?;
            if let Some(settings) = queue_settings(&answer)? {
                return Ok(settings);
            }
            tokio::time::sleep(STATISTICS_POLL).await;
        }
    }

    /// `GET` of the API path `segments` (each percent-encoded, so a vhost
    /// `/` becomes `%2F`), asking only for `columns`.
    async fn get(
        &self,
        segments: &[&str],
        columns: &str,
    ) -> Result<Map<String, Value>, ManagementError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ManagementError::InvalidUrl)?
            .pop_if_empty()
            .extend(segments);
        url.query_pairs_mut()
            .clear()
            .append_pair("columns", columns);
        let mut request = self.client.get(url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let mut response = request.send().await.map_err(failure)?;
        match response.status() {
            StatusCode::OK => {}
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(ManagementError::Unauthorized(status.as_u16()));
            }
            status => return Err(ManagementError::Status(status.as_u16())),
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            if body.len().saturating_add(chunk.len()) > MAX_BODY {
                return Err(ManagementError::InvalidResponse);
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice(&body) {
            Ok(Value::Object(answer)) => Ok(answer),
            _ => Err(ManagementError::InvalidResponse),
        }
    }
}

fn failure(error: reqwest::Error) -> ManagementError {
    if error.is_timeout() {
        ManagementError::Timeout
    } else {
        ManagementError::Unreachable(error.without_url())
    }
}

/// The queue's settings from its management answer, or `None` while its
/// statistics (which carry the policy) have not been gathered yet.
fn queue_settings(answer: &Map<String, Value>) -> Result<Option<QueueSettings>, ManagementError> {
    let Some(policy) = answer.get("effective_policy_definition") else {
        return Ok(None);
    };
    Ok(Some(QueueSettings {
        arguments: table(answer.get("arguments"))?,
        policy: table(Some(policy))?,
    }))
}

/// A JSON object; older brokers render an empty one as `[]`, and none as
/// `null`.
fn table(value: Option<&Value>) -> Result<Map<String, Value>, ManagementError> {
    match value {
        Some(Value::Object(map)) => Ok(map.clone()),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Array(items)) if items.is_empty() => Ok(Map::new()),
        Some(_) => Err(ManagementError::InvalidResponse),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_queue_without_statistics_yet_is_asked_again() {
        let answer = object(json!({"arguments": {"x-queue-type": "quorum"}}));
        assert_eq!(queue_settings(&answer).unwrap(), None);
    }

    #[test]
    fn the_arguments_and_the_effective_policy_are_read() {
        let answer = object(json!({
            "arguments": {"x-queue-type": "quorum"},
            "effective_policy_definition": {"delivery-limit": 2},
        }));
        let settings = queue_settings(&answer).unwrap().unwrap();
        assert_eq!(
            settings.arguments,
            object(json!({"x-queue-type": "quorum"}))
        );
        assert_eq!(settings.policy, object(json!({"delivery-limit": 2})));
    }

    #[test]
    fn empty_tables_may_come_as_empty_lists_or_null() {
        let answer = object(json!({"arguments": [], "effective_policy_definition": null}));
        assert_eq!(
            queue_settings(&answer).unwrap(),
            Some(QueueSettings::default())
        );
        let odd = object(json!({"arguments": {}, "effective_policy_definition": "x"}));
        assert!(matches!(
            queue_settings(&odd),
            Err(ManagementError::InvalidResponse)
        ));
    }

    #[test]
    fn the_vhost_and_missing_credentials_come_from_the_amqp_url() {
        let url = Secret::new("http://127.0.0.1:15672");
        let management =
            Management::new(&url, "amqp://app:s3cret@127.0.0.1:5672/shop%2Fprod").unwrap();
        assert_eq!(management.vhost, "shop/prod");
        assert_eq!(
            management.credentials,
            Some(("app".to_owned(), "s3cret".to_owned()))
        );
        let default = Management::new(&url, "amqp://127.0.0.1:5672/%2f").unwrap();
        assert_eq!(default.vhost, "/");
        assert_eq!(
            default.credentials,
            Some(("guest".to_owned(), "guest".to_owned()))
        );
    }

    #[test]
    fn credentials_in_the_management_url_are_left_to_it() {
        let url = Secret::new("https://ops:hunter2@mq.example:15671/rabbitmq/");
        let management = Management::new(&url, "amqp://app:s3cret@mq.example/%2f").unwrap();
        assert_eq!(management.credentials, None);
    }

    #[test]
    fn errors_never_show_the_url() {
        let error = Management::new(&Secret::new("mailto:ops:hunter2@x"), "amqp://h").err();
        let shown = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("amqp.management_url") && !shown.contains("hunter2"));
    }
}
