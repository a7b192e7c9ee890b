//! Schema version 2, the current one.
//!
//! What changed from v1, and why: consents are kept per channel (`consents.marketing_email`,
//! `consents.marketing_sms`) because the profile service started asking for SMS
//! consent separately, as privacy law expects; and the user's IANA `time_zone` was
//! added for local-time analytics. Nothing was removed, so every v1 event upcasts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::number::DdbNumber;

/// A user profile as the current schema version carries it: the projection of the
/// profile service's item that the contract names, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The aggregate id; equal to the envelope's `key`.
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    /// ISO 3166-1 alpha-2 country code, when the user gave one.
    pub country: Option<String>,
    /// Billing plan name (`free`, `pro`, `business`, `enterprise`, …).
    pub plan: String,
    /// Marketing consents, one per channel.
    pub consents: Consents,
    /// BCP 47 language tag, e.g. `en-GB`.
    pub locale: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: Option<String>,
    /// Revenue from this user in cents, a DynamoDB number kept exact.
    pub lifetime_value_cents: Option<DdbNumber>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
}

/// Marketing consents by channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consents {
    pub marketing_email: bool,
    pub marketing_sms: bool,
}
