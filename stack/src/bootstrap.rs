//! Creates, idempotently, every AWS resource the pipeline needs: the profile table with
//! its stream, the checkpoint table, the topic, the subscriber's queue with its DLQ and
//! redrive policy, a queue policy that admits only the topic, the raw-delivery
//! subscription with its own dead-letter queue (SNS's redrive policy: a delivery SQS
//! refuses lands there instead of being dropped), and the publisher's failure queue.

use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use publisher::checkpoint::KEY_ATTRIBUTE;
use publisher::record::attr;
use runtime::aws::Clients;

/// Names of the resources, each from a flag with a sensible default.
#[derive(Debug, Clone, clap::Args)]
pub struct Names {
    /// Profile table (partition key `user_id`, stream NEW_AND_OLD_IMAGES, TTL on `expires_at`).
    #[arg(long, env = "BOOTSTRAP_TABLE", default_value = "profiles")]
    pub table: String,
    /// Publisher's lease and checkpoint table.
    #[arg(
        long,
        env = "BOOTSTRAP_CHECKPOINT_TABLE",
        default_value = "tributary-checkpoints"
    )]
    pub checkpoint_table: String,
    /// SNS topic the publisher publishes to.
    #[arg(long, env = "BOOTSTRAP_TOPIC", default_value = "profile-changes")]
    pub topic: String,
    /// The analytics subscriber's queue.
    #[arg(
        long,
        env = "BOOTSTRAP_QUEUE",
        default_value = "analytics-profile-changes"
    )]
    pub queue: String,
    /// Its dead-letter queue.
    #[arg(
        long,
        env = "BOOTSTRAP_DLQ",
        default_value = "analytics-profile-changes-dlq"
    )]
    pub dlq: String,
    /// The subscription's dead-letter queue: messages SNS could not deliver to the queue
    /// (a queue policy or KMS change, a body SQS refuses). Redrive it with `replay dlq
    /// --dlq-url <it> --queue-url <the queue>`.
    #[arg(
        long,
        env = "BOOTSTRAP_DELIVERY_DLQ",
        default_value = "analytics-profile-changes-delivery-dlq"
    )]
    pub delivery_dlq: String,
    /// The publisher's failure queue for records that can never be published.
    #[arg(
        long,
        env = "BOOTSTRAP_FAILURE_QUEUE",
        default_value = "profile-changes-publish-failures"
    )]
    pub failure_queue: String,
    /// Receives before SQS moves a message to the DLQ by itself.
    #[arg(long, env = "BOOTSTRAP_MAX_RECEIVE_COUNT", default_value = "5")]
    pub max_receive_count: u32,
    /// Queue visibility timeout in seconds: longer than a batch takes to apply.
    #[arg(long, env = "BOOTSTRAP_VISIBILITY_TIMEOUT_SECS", default_value = "60")]
    pub visibility_timeout_secs: u32,
}

impl Names {
    /// Throw-away names for one test or benchmark run: `<prefix><what>-<id>` for every
    /// resource, 5 receives before the DLQ, a 30 s visibility timeout.
    pub fn scratch(prefix: &str, id: &str) -> Names {
        let name = |what: &str| format!("{prefix}{what}-{id}");
        Names {
            table: name("profiles"),
            checkpoint_table: name("checkpoints"),
            topic: name("profile-changes"),
            queue: name("analytics"),
            dlq: name("analytics-dlq"),
            failure_queue: name("publish-failures"),
            delivery_dlq: name("delivery-dlq"),
            max_receive_count: 5,
            visibility_timeout_secs: 30,
        }
    }
}

/// What bootstrap created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub table: String,
    pub stream_arn: String,
    pub checkpoint_table: String,
    pub topic_arn: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub failure_queue_url: String,
    pub subscription_arn: String,
    /// Where SNS puts what it could not deliver to `queue_url`.
    pub delivery_dlq_url: String,
}

impl Resources {
    /// The settings as `export NAME=value` lines, for a shell to source.
    pub fn to_env(&self) -> String {
        format!(
            "export PUBLISHER_TABLE={}\nexport PUBLISHER_CHECKPOINT_TABLE={}\nexport PUBLISHER_TOPIC_ARN={}\n\
             export PUBLISHER_FAILURE_QUEUE_URL={}\nexport SUBSCRIBER_QUEUE_URL={}\nexport SUBSCRIBER_DLQ_URL={}\n\
             export TRIBUTARY_STREAM_ARN={}\nexport SUBSCRIBER_TOPIC_ARN={}\nexport TRIBUTARY_DELIVERY_DLQ_URL={}\n",
            self.table,
            self.checkpoint_table,
            self.topic_arn,
            self.failure_queue_url,
            self.queue_url,
            self.dlq_url,
            self.stream_arn,
            self.topic_arn,
            self.delivery_dlq_url
        )
    }
}

/// Bootstrap failed; the message names the resource.
#[derive(Debug, thiserror::Error)]
#[error("bootstrap: {resource}: {message}")]
pub struct BootstrapError {
    pub resource: String,
    pub message: String,
}

impl BootstrapError {
    /// Whether the endpoint could not be reached at all (the SDK's dispatch failure: a
    /// refused or timed-out connection), as when the service is still starting: worth
    /// trying again, unlike a refusal the service answered with.
    pub fn is_unreachable(&self) -> bool {
        self.message.starts_with("dispatch failure")
    }
}

fn fail(resource: impl Into<String>, err: impl std::fmt::Display) -> BootstrapError {
    BootstrapError {
        resource: resource.into(),
        message: err.to_string(),
    }
}

/// Creates whatever is missing; running it twice changes nothing.
///
/// # Errors
/// [`BootstrapError`] naming the resource that could not be created.
pub async fn bootstrap(clients: &Clients, names: &Names) -> Result<Resources, BootstrapError> {
    let stream_arn = ensure_table(clients, &names.table, attr::USER_ID, true).await?;
    ensure_table(clients, &names.checkpoint_table, KEY_ATTRIBUTE, false).await?;

    let topic_arn = clients
        .sns
        .create_topic()
        .name(&names.topic)
        .send()
        .await
        .map_err(|e| fail(&names.topic, runtime::report::describe_sdk_error(&e)))?
        .topic_arn
        .ok_or_else(|| fail(&names.topic, "CreateTopic returned no ARN"))?;

    let (dlq_url, dlq_arn) = ensure_queue(
        clients,
        &names.dlq,
        &[(QueueAttributeName::MessageRetentionPeriod, "1209600".into())],
    )
    .await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": names.max_receive_count.to_string(),
    })
    .to_string();
    let (queue_url, queue_arn) = ensure_queue(
        clients,
        &names.queue,
        &[
            (QueueAttributeName::RedrivePolicy, redrive),
            (
                QueueAttributeName::VisibilityTimeout,
                names.visibility_timeout_secs.to_string(),
            ),
            (QueueAttributeName::MessageRetentionPeriod, "1209600".into()),
        ],
    )
    .await?;
    let (failure_queue_url, _) = ensure_queue(
        clients,
        &names.failure_queue,
        &[(QueueAttributeName::MessageRetentionPeriod, "1209600".into())],
    )
    .await?;

    let (delivery_dlq_url, delivery_dlq_arn) = ensure_queue(
        clients,
        &names.delivery_dlq,
        &[(QueueAttributeName::MessageRetentionPeriod, "1209600".into())],
    )
    .await?;

    // Only this topic may send to the queue, and to the subscription's DLQ (SNS moves
    // an undeliverable message there with its own service principal).
    for (name, url, arn) in [
        (&names.queue, &queue_url, &queue_arn),
        (&names.delivery_dlq, &delivery_dlq_url, &delivery_dlq_arn),
    ] {
        clients
            .sqs
            .set_queue_attributes()
            .queue_url(url)
            .attributes(
                QueueAttributeName::Policy,
                topic_only_policy(arn, &topic_arn),
            )
            .send()
            .await
            .map_err(|e| fail(name, runtime::report::describe_sdk_error(&e)))?;
    }

    let subscription_arn = clients
        .sns
        .subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .return_subscription_arn(true)
        .send()
        .await
        .map_err(|e| {
            fail(
                format!("subscription {} → {}", names.topic, names.queue),
                runtime::report::describe_sdk_error(&e),
            )
        })?
        .subscription_arn
        .unwrap_or_default();
    // Set apart from Subscribe, so a subscription made by an older bootstrap (without
    // it) is updated instead of refused as "exists with different attributes".
    clients
        .sns
        .set_subscription_attributes()
        .subscription_arn(&subscription_arn)
        .attribute_name("RedrivePolicy")
        .attribute_value(subscription_redrive_policy(&delivery_dlq_arn))
        .send()
        .await
        .map_err(|e| {
            fail(
                format!(
                    "subscription {} → {} redrive policy",
                    names.topic, names.queue
                ),
                runtime::report::describe_sdk_error(&e),
            )
        })?;

    Ok(Resources {
        table: names.table.clone(),
        stream_arn,
        checkpoint_table: names.checkpoint_table.clone(),
        topic_arn,
        queue_url,
        queue_arn,
        dlq_url,
        dlq_arn,
        failure_queue_url,
        subscription_arn,
        delivery_dlq_url,
    })
}

/// A queue policy admitting only SNS sending on behalf of `topic_arn`.
pub fn topic_only_policy(queue_arn: &str, topic_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowTopic",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } }
        }]
    })
    .to_string()
}

/// An SNS subscription's `RedrivePolicy`: what SNS cannot deliver goes to `dlq_arn`.
///
/// <https://docs.aws.amazon.com/sns/latest/dg/sns-configure-dead-letter-queue.html>
pub fn subscription_redrive_policy(dlq_arn: &str) -> String {
    serde_json::json!({ "deadLetterTargetArn": dlq_arn }).to_string()
}

/// Creates a table keyed by one string attribute (with a stream when asked) unless it
/// exists, waits for it to be ACTIVE, and returns its stream ARN (empty without one).
async fn ensure_table(
    clients: &Clients,
    name: &str,
    key: &str,
    stream: bool,
) -> Result<String, BootstrapError> {
    let mut create = clients
        .dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| fail(name, e))?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| fail(name, e))?,
        );
    if stream {
        create = create.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(|e| fail(name, e))?,
        );
    }
    match create.send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(fail(name, runtime::report::describe_sdk_error(&e))),
    }
    for _ in 0..300 {
        let desc = clients
            .dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| fail(name, runtime::report::describe_sdk_error(&e)))?
            .table
            .ok_or_else(|| fail(name, "DescribeTable returned no table"))?;
        if desc.table_status == Some(TableStatus::Active) {
            if stream {
                let view = desc
                    .stream_specification
                    .as_ref()
                    .and_then(|s| s.stream_view_type.clone());
                if view != Some(StreamViewType::NewAndOldImages) {
                    return Err(fail(name, "exists without a NEW_AND_OLD_IMAGES stream"));
                }
                // Deletions by TTL (flagged `expired` downstream). Enabling twice is
                // refused by some implementations; the setting is what matters.
                let _ = clients
                    .dynamodb
                    .update_time_to_live()
                    .table_name(name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .enabled(true)
                            .attribute_name("expires_at")
                            .build()
                            .map_err(|e| fail(name, e))?,
                    )
                    .send()
                    .await;
            }
            return Ok(desc.latest_stream_arn.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(fail(name, "not ACTIVE after 60 s"))
}

async fn ensure_queue(
    clients: &Clients,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> Result<(String, String), BootstrapError> {
    let url = clients
        .sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| fail(name, runtime::report::describe_sdk_error(&e)))?
        .queue_url
        .ok_or_else(|| fail(name, "CreateQueue returned no URL"))?;
    // Set attributes separately so a re-run with changed settings updates them instead
    // of failing with QueueAlreadyExists.
    if !attributes.is_empty() {
        let mut req = clients.sqs.set_queue_attributes().queue_url(&url);
        for (k, v) in attributes {
            req = req.attributes(k.clone(), v);
        }
        req.send()
            .await
            .map_err(|e| fail(name, runtime::report::describe_sdk_error(&e)))?;
    }
    let arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| fail(name, runtime::report::describe_sdk_error(&e)))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| fail(name, "no QueueArn attribute"))?;
    Ok((url, arn))
}
