//! Talking to RabbitMQ from a test: publishing with confirms, reading the
//! dead-letter queue, deleting a test's topology.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::AMQP_URL;

pub struct Broker {
    connection: Connection,
    pub channel: Channel,
}

/// A message read back from a queue.
pub struct Received {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            AMQPValue::LongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// The frame size negotiated with the broker (the daemon's is the same).
    pub fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker did not confirm");
        assert!(
            confirm.take_message().is_none(),
            "the message was not routed to a queue"
        );
    }

    /// A JSON message as `publish` would send it, with an optional traceparent.
    pub fn properties(traceparent: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(tp) = traceparent {
            headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers)
    }

    /// Takes one message from `queue` (acknowledging it), if there is one.
    pub async fn get(&self, queue: &str) -> Option<Received> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()?;
        Some(Received {
            body: message.delivery.data.clone(),
            properties: message.delivery.properties.clone(),
        })
    }

    /// Publishes straight into `env`'s dead-letter queue, through its
    /// dead-letter exchange, as the daemon does (declare the topology first).
    pub async fn dead_letter(
        &self,
        env: &super::TestEnv,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let dlx = format!("{}.dlx", env.exchange);
        self.publish(&dlx, &env.queue, body, properties).await;
    }

    /// Takes every message ready in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut taken = Vec::new();
        while let Some(message) = self.get(queue).await {
            taken.push(message);
        }
        taken
    }

    /// Messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        declared.message_count()
    }

    /// Declares the daemon's topology for `env`, as the daemon itself would,
    /// so that orders can be published before it starts.
    pub async fn declare(&self, env: &super::TestEnv) {
        let names = order_processor::adapters::amqp::TopologyNames {
            exchange: env.exchange.clone(),
            routing_key: env.routing_key.clone(),
            queue: env.queue.clone(),
        };
        order_processor::adapters::amqp::topology::declare(&self.channel, &names, 5)
            .await
            .unwrap();
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Removes every queue and exchange a test's daemon declared.
pub async fn delete_topology(queue: &str, exchange: &str) {
    let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
    else {
        return;
    };
    let mut queues = vec![queue.to_owned(), format!("{queue}.dead")];
    queues.extend((1..=10).map(|n| format!("{queue}.retry.{n}")));
    for name in queues {
        // Deleting a queue that does not exist closes the channel; use a fresh one each time.
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for name in [exchange.to_owned(), format!("{exchange}.dlx")] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}
