//! Schema version 1: the profile as first published.
//!
//! Kept forever: a v1 event still in a queue, a DLQ or a replay file must decode.
//! [`ProfileV1::upcast`] turns it into the current [`crate::Profile`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::number::DdbNumber;
use crate::v2::{Consents, Profile};

/// A user profile as schema version 1 carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileV1 {
    /// The aggregate id; equal to the envelope's `key`.
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    /// ISO 3166-1 alpha-2 country code, when the user gave one.
    pub country: Option<String>,
    /// Billing plan name (`free`, `pro`, `business`, `enterprise`, …).
    pub plan: String,
    /// Consent to marketing e-mail. Version 2 splits consents by channel.
    pub marketing_opt_in: bool,
    /// BCP 47 language tag, e.g. `en-GB`.
    pub locale: Option<String>,
    /// Revenue from this user in cents, a DynamoDB number kept exact.
    pub lifetime_value_cents: Option<DdbNumber>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
}

impl ProfileV1 {
    /// The current-version profile this v1 profile stands for.
    ///
    /// v1 knew one marketing consent, for e-mail; SMS marketing did not exist, so it
    /// is `false` (no consent was ever given). v1 had no time zone.
    pub fn upcast(self) -> Profile {
        Profile {
            user_id: self.user_id,
            email: self.email,
            display_name: self.display_name,
            country: self.country,
            plan: self.plan,
            consents: Consents {
                marketing_email: self.marketing_opt_in,
                marketing_sms: false,
            },
            locale: self.locale,
            time_zone: None,
            lifetime_value_cents: self.lifetime_value_cents,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// What a v1 publisher (one that predates v2) publishes for this profile: the fields
    /// v2 added are not known to it and are dropped.
    pub fn downcast(profile: &Profile) -> ProfileV1 {
        ProfileV1 {
            user_id: profile.user_id.clone(),
            email: profile.email.clone(),
            display_name: profile.display_name.clone(),
            country: profile.country.clone(),
            plan: profile.plan.clone(),
            marketing_opt_in: profile.consents.marketing_email,
            locale: profile.locale.clone(),
            lifetime_value_cents: profile.lifetime_value_cents.clone(),
            created_at: profile.created_at,
            updated_at: profile.updated_at,
        }
    }
}
