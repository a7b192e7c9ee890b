//! Declared entities end to end through the real subscriber binary, real SQS (the
//! emulator) and a real PostgreSQL: an entity that is not the profile (orders:
//! composite key, a list of maps as jsonb, a string set as text[], soft deletes)
//! replicated from declarations alone; and the start refused when the store does not
//! fit the mapping.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use e2e::{Stack, bin_command, eventually, output_text, run_to_end};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn order_mapping() -> String {
    repo("mappings/subscriber/order.toml").display().to_string()
}

/// An order event body: the golden fixture at `version`, `status`, or a delete.
fn order_body(version: i64, status: Option<&str>) -> String {
    let kind = if status.is_some() {
        "upserted"
    } else {
        "deleted"
    };
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(&format!("contracts/fixtures/order/v1/{kind}.json")))
            .unwrap(),
    )
    .unwrap();
    body["version"] = version.into();
    body["event_id"] = format!("order-e2e-{kind}-{version}").into();
    if let Some(status) = status {
        body["data"]["status"] = status.into();
    }
    body.to_string()
}

#[tokio::test]
async fn orders_replicate_through_the_subscriber_from_declarations_alone() -> Result<()> {
    let stack = Stack::new().await?;
    let mapping = order_mapping();
    let mut migrate = bin_command("subscriber", &["migrate", "--mapping", &mapping])?;
    migrate.env("DATABASE_URL", &stack.database_url);
    let out = run_to_end(migrate, CONVERGE).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let mut subscriber = stack.spawn_subscriber(&["--mapping", &mapping])?;
    // In an order no queue keeps: the delete, copies, and updates older than it.
    let bodies = [
        order_body(2, Some("paid")),
        order_body(1, Some("placed")),
        order_body(2, Some("paid")),
        order_body(3, Some("shipped")),
        order_body(4, None),
        order_body(3, Some("shipped")),
        order_body(1, Some("placed")),
    ];
    stack.send_bodies(&bodies).await?;
    let history = eventually("every order change applied once", CONVERGE, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.order_changes")
            .fetch_one(&stack.pool)
            .await?;
        Ok((n == 4).then_some(n))
    })
    .await?;
    stack
        .wait_depth(&stack.resources.queue_url, 0, CONVERGE)
        .await?;
    let row: (bool, i64, String, Value, Vec<String>, String, bool) = sqlx::query_as(
        "SELECT deleted, version, status, items, tags, total::text, deleted_at IS NOT NULL
         FROM analytics.orders WHERE customer_id = 'c-0001' AND order_id = 'o-0042'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(
        (row.0, row.1),
        (true, 4),
        "the delete won, whatever the order"
    );
    assert_eq!(row.2, "shipped", "a soft delete keeps the last data");
    assert_eq!(
        row.3[0],
        json!({"sku": "SKU-RED-1", "quantity": "2", "unit_price": "9.99"})
    );
    assert_eq!(row.4, ["express", "gift"]);
    assert_eq!(row.5, "1234567890123456789012345678901234.56");
    assert!(row.6, "deleted_at is set");
    assert_eq!(history, 4);
    assert_eq!(
        stack.queue_depth(&stack.resources.dlq_url).await?,
        0,
        "nothing parked"
    );
    stack.finish(&mut [&mut subscriber]).await
}

#[tokio::test]
async fn a_subscriber_refuses_to_start_on_a_table_that_does_not_fit_its_mapping() -> Result<()> {
    let stack = Stack::new().await?;
    sqlx::query("ALTER TABLE analytics.user_profiles ALTER COLUMN email TYPE varchar(64)")
        .execute(&stack.pool)
        .await?;
    let out = run_to_end(stack.subscriber_command("1", &[])?, CONVERGE).await?;
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("analytics.user_profiles: column")
            && text.contains("email")
            && text.contains("is character varying(64), but the mapping declares text"),
        "{text}"
    );
    stack.teardown().await
}
