//! The database URL from AWS Secrets Manager, for `subscriber-lambda`: the function's
//! environment carries only the secret's ARN (`SUBSCRIBER_DATABASE_SECRET_ARN`), the
//! URL is read at cold start, and read again when PostgreSQL refuses the credentials
//! (the secret was rotated), so a rotation needs no redeploy.
//!
//! The secret's `SecretString` is the URL itself (`postgres://…`), or a JSON object
//! holding it under the key `url`.
//! <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>

use crate::config::DatabaseUrl;
use runtime::report::error_chain;

/// SQLSTATEs of a refused login: `invalid_password` and
/// `invalid_authorization_specification` (no such role, no pg_hba entry).
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
pub(crate) const AUTHENTICATION_FAILED: [&str; 2] = ["28P01", "28000"];

/// Why the database secret could not be used. Never carries the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager did not answer, or refused (permissions, no such secret).
    #[error("could not read secret {arn}: {reason}")]
    Read { arn: String, reason: String },
    /// The secret has no string value (a binary secret).
    #[error("secret {arn} has no SecretString")]
    NoString { arn: String },
    /// The value is neither a PostgreSQL URL nor JSON holding one under `url`.
    #[error("secret {arn}: {problem}")]
    Malformed { arn: String, problem: String },
}

impl SecretError {
    /// Whether reading again may help; `false` when the secret itself must be fixed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SecretError::Read { .. })
    }
}

/// PURE: the database URL in a `SecretString`.
///
/// # Errors
/// Why the value is not usable, without the value.
pub(crate) fn url_of_secret_string(value: &str) -> Result<DatabaseUrl, String> {
    let trimmed = value.trim();
    let url = if trimmed.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|_| "the SecretString is not valid JSON".to_owned())?;
        match json.get("url") {
            Some(serde_json::Value::String(url)) => url.clone(),
            Some(_) => return Err("the JSON key `url` is not a string".to_owned()),
            None => return Err("the JSON has no key `url`".to_owned()),
        }
    } else {
        trimmed.to_owned()
    };
    url.parse::<DatabaseUrl>()
        .map_err(|e| format!("the database URL is refused: {e}"))
}

/// Whether `e` is PostgreSQL refusing the credentials.
pub(crate) fn is_authentication_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| AUTHENTICATION_FAILED.contains(&code.as_ref())),
        _ => false,
    }
}

/// The secret holding the database URL, and the client that reads it.
#[derive(Debug, Clone)]
pub struct DatabaseSecret {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
}

impl DatabaseSecret {
    pub fn new(client: aws_sdk_secretsmanager::Client, arn: String) -> DatabaseSecret {
        DatabaseSecret { client, arn }
    }

    /// The secret's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Reads the current value (`GetSecretValue`, stage `AWSCURRENT`).
    ///
    /// # Errors
    /// [`SecretError`].
    pub async fn read(&self) -> Result<DatabaseUrl, SecretError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.arn)
            .send()
            .await
            .map_err(|e| SecretError::Read {
                arn: self.arn.clone(),
                reason: error_chain(&e),
            })?;
        let value = output
            .secret_string()
            .ok_or_else(|| SecretError::NoString {
                arn: self.arn.clone(),
            })?;
        url_of_secret_string(value).map_err(|problem| SecretError::Malformed {
            arn: self.arn.clone(),
            problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_a_url_or_json_with_a_url() {
        let url = url_of_secret_string("postgres://app:pw@db.internal/analytics").unwrap();
        assert_eq!(
            url.expose_secret(),
            "postgres://app:pw@db.internal/analytics"
        );
        let url = url_of_secret_string(r#"{"url": "postgres://app:pw@db/a", "username": "app"}"#)
            .unwrap();
        assert_eq!(url.expose_secret(), "postgres://app:pw@db/a");
    }

    #[test]
    fn a_malformed_secret_is_refused_without_its_value() {
        for value in [
            r#"{"username": "app", "password": "s3cret"}"#,
            r#"{"url": 12345678}"#,
            r#"{"url": "mysql://app:s3cret@db/a"}"#,
            "{not json s3cret",
            "s3cret",
        ] {
            let problem = url_of_secret_string(value).unwrap_err();
            assert!(!problem.contains("s3cret"), "{problem}");
            assert!(!problem.contains("12345678"), "{problem}");
        }
    }

    #[test]
    fn only_a_refused_login_counts_as_an_authentication_failure() {
        assert!(!is_authentication_failure(&sqlx::Error::PoolTimedOut));
    }
}
