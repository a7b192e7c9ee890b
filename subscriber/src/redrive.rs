//! PURE: a queue's `RedrivePolicy` (its DLQ and `maxReceiveCount`), as SQS returns it.
//!
//! <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-configure-dead-letter-queue.html>

/// The DLQ a RedrivePolicy points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedriveTarget {
    /// The DLQ owner's account id (the ARN's fifth field).
    pub account_id: String,
    /// The DLQ's name (the ARN's last field), for GetQueueUrl.
    pub queue_name: String,
}

/// Reads `deadLetterTargetArn` (`arn:aws:sqs:region:account:name`) from a RedrivePolicy.
///
/// # Errors
/// A short description of what is wrong with the policy.
pub(crate) fn dlq_from_redrive_policy(policy: &str) -> Result<RedriveTarget, &'static str> {
    let policy: serde_json::Value =
        serde_json::from_str(policy).map_err(|_| "RedrivePolicy is not JSON")?;
    let arn = policy
        .get("deadLetterTargetArn")
        .and_then(|v| v.as_str())
        .ok_or("RedrivePolicy has no deadLetterTargetArn")?;
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _partition, "sqs", _region, account, name] if !name.is_empty() => {
            Ok(RedriveTarget {
                account_id: (*account).to_owned(),
                queue_name: (*name).to_owned(),
            })
        }
        _ => Err("deadLetterTargetArn is not an SQS queue ARN"),
    }
}

/// Reads `maxReceiveCount` from a RedrivePolicy: a number, or a string of one as SQS
/// returns it. `None` if absent or not a positive integer.
pub(crate) fn max_receive_count_from_redrive_policy(policy: &str) -> Option<u32> {
    let policy: serde_json::Value = serde_json::from_str(policy).ok()?;
    let count = match policy.get("maxReceiveCount")? {
        serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_receive_count_is_read_as_a_number_or_a_string() {
        let arn = "arn:aws:sqs:us-east-1:123456789012:dlq";
        for (policy, expected) in [
            (
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"5"}}"#),
                Some(5),
            ),
            (
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":7}}"#),
                Some(7),
            ),
            (
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":0}}"#),
                None,
            ),
            (format!(r#"{{"deadLetterTargetArn":"{arn}"}}"#), None),
            ("nope".to_owned(), None),
        ] {
            assert_eq!(
                max_receive_count_from_redrive_policy(&policy),
                expected,
                "{policy}"
            );
        }
    }

    #[test]
    fn redrive_policy_names_the_dlq_by_its_arn() {
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:analytics-dlq","maxReceiveCount":"5"}"#;
        assert_eq!(
            dlq_from_redrive_policy(policy),
            Ok(RedriveTarget {
                account_id: "123456789012".into(),
                queue_name: "analytics-dlq".into()
            })
        );
    }

    #[test]
    fn redrive_policy_without_a_target_is_refused() {
        assert!(dlq_from_redrive_policy(r#"{"maxReceiveCount":5}"#).is_err());
        assert!(
            dlq_from_redrive_policy(r#"{"deadLetterTargetArn":"arn:aws:sns:us-east-1:1:t"}"#)
                .is_err()
        );
        assert!(dlq_from_redrive_policy("nope").is_err());
    }
}
