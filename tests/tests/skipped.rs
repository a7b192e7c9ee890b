//! What a bare `cargo test` leaves out, and how to run it. The end-to-end suites in this
//! folder need DynamoDB Local, an SNS/SQS emulator and PostgreSQL, which
//! `scripts/test.sh` installs and starts; they are compiled only with this crate's `e2e`
//! feature, which that script turns on.

#[cfg(not(feature = "e2e"))]
#[test]
#[ignore = "the end-to-end suites need the emulators: run scripts/test.sh (or cargo nextest run --workspace --features tributary-e2e/e2e with them started by scripts/env-up.sh)"]
fn end_to_end_suites_are_skipped_without_the_e2e_feature() {}
