//! PURE: every decision of `replay dlq` — which way the move is done, what to do with
//! each message received (move, would move, keep), how the copies fit the
//! `SendMessageBatch` limits, what SQS's answers mean for each message, how the report
//! counts them, and when the loop is done. [`super`] only talks to SQS and calls these.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use runtime::limits::sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use subscriber::parking::{DETAIL_ATTRIBUTE, REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE};

use super::{Method, Options, Report, Seen};

/// Reason shown for a message SQS moved by itself (its redrive policy's
/// `maxReceiveCount`), which carries no reason attribute.
pub const NO_REASON: &str = "none";

/// Hold used when `--hold` does not fit SQS's `VisibilityTimeout` (an `i32`), in
/// seconds.
const FALLBACK_HOLD_SECS: i32 = 60;

/// Whether SQS's own `StartMessageMoveTask` may do the move: it moves every message
/// and cannot filter, stop at a count or merely list, so only [`Method::Auto`] without
/// a reason filter, a `--max` or a dry run.
pub(crate) fn uses_move_task(options: &Options) -> bool {
    options.method == Method::Auto
        && options.reasons.is_empty()
        && !options.dry_run
        && options.max.is_none()
}

/// The visibility timeout a received message is held under, in seconds: the hold,
/// [`FALLBACK_HOLD_SECS`] when it does not fit, and never 0 (which would not hold).
pub(crate) fn hold_secs(hold: Duration) -> i32 {
    i32::try_from(hold.as_secs())
        .unwrap_or(FALLBACK_HOLD_SECS)
        .max(1)
}

/// Whether `--max` messages were moved already: receive no more.
pub(crate) fn reached_max(max: Option<u64>, moved: u64) -> bool {
    max.is_some_and(|max| moved >= max)
}

/// Sorts one receive: the messages not seen before are returned, in order, for
/// examination (and remembered in `seen`). A message seen before whose hold expired is
/// received again: when the loop holds it, it is held on under the new receipt handle
/// (only the latest handle releases it); otherwise it is ignored. A message without an
/// id or a receipt handle cannot be handled and is skipped.
pub(crate) fn fresh_messages(
    messages: Vec<Message>,
    seen: &mut HashSet<String>,
    held: &mut HashMap<String, String>,
) -> Vec<Message> {
    let mut fresh = Vec::new();
    for m in messages {
        let (Some(id), Some(handle)) = (m.message_id(), m.receipt_handle()) else {
            continue;
        };
        if seen.insert(id.to_owned()) {
            fresh.push(m);
        } else if let Some(h) = held.get_mut(id) {
            handle.clone_into(h);
        }
    }
    fresh
}

/// What the loop does with one message it examines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Triage {
    /// Copy it to the main queue, then delete it from the DLQ.
    Move,
    /// A dry run: it would move; it stays, held until the end, and counts as moved.
    WouldMove,
    /// Filtered out by `--reason`, or past `--max`: it stays, held until the end.
    Keep,
}

/// Triage of a message parked for `reason`, when `moved` messages were moved (or would
/// be) and `queued` more are waiting to be sent: `--max` counts both.
pub(crate) fn triage(options: &Options, moved: u64, queued: usize, reason: &str) -> Triage {
    let wanted = options.reasons.is_empty() || options.reasons.iter().any(|r| r == reason);
    let room = options.max.is_none_or(|max| moved + (queued as u64) < max);
    match (wanted && room, options.dry_run) {
        (false, _) => Triage::Keep,
        (true, true) => Triage::WouldMove,
        (true, false) => Triage::Move,
    }
}

/// How one message was settled: its line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The main queue accepted its copy (it is deleted from the DLQ).
    Moved,
    /// A dry run would have moved it.
    WouldMove,
    /// Not selected (reason filter or `--max`).
    Kept,
    /// Not moved, and why; it stays in the DLQ.
    Failed(String),
}

impl Settled {
    /// The outcome as [`Seen::outcome`] shows it.
    pub(crate) fn label(&self) -> String {
        match self {
            Settled::Moved => "moved".to_owned(),
            Settled::WouldMove => "would-move".to_owned(),
            Settled::Kept => "kept".to_owned(),
            Settled::Failed(why) => format!("failed: {why}"),
        }
    }

    /// Whether the message stays in the DLQ, held by the loop and released at the
    /// end: every message but a moved one.
    pub(crate) fn stays(&self) -> bool {
        !matches!(self, Settled::Moved)
    }
}

/// Records a settled message in the report: its outcome, the counts (moved and would
/// move count as moved, by reason), and the message itself. Returns it as recorded,
/// for the caller to print.
pub(crate) fn settle<'r>(report: &'r mut Report, mut seen: Seen, settled: &Settled) -> &'r Seen {
    seen.outcome = settled.label();
    match settled {
        Settled::Moved | Settled::WouldMove => {
            report.moved += 1;
            *report.by_reason.entry(seen.reason.clone()).or_default() += 1;
        }
        Settled::Kept => report.kept += 1,
        Settled::Failed(_) => report.failed += 1,
    }
    report.messages.push(seen);
    report.messages.last().expect("pushed just now")
}

/// Why a message of `size` bytes is never sent.
pub(crate) fn too_large(size: usize) -> Settled {
    Settled::Failed(format!(
        "{size} bytes, more than the {MAX_BATCH_BYTES} SQS accepts"
    ))
}

/// The reason `SendMessageBatch` gave for refusing an entry.
pub(crate) fn refusal(code: &str, message: Option<&str>) -> String {
    format!("{code}: {}", message.unwrap_or_default())
}

/// What `SendMessageBatch` said of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendResult {
    /// The main queue holds the copy: delete the original from the DLQ.
    Accepted,
    /// The main queue refused the copy, and why: the original stays in the DLQ.
    Refused(String),
    /// SQS named the entry in neither list: no proof of a copy, so the original stays.
    Unanswered,
}

impl SendResult {
    /// How the message is settled in the report.
    pub(crate) fn settled(&self) -> Settled {
        match self {
            SendResult::Accepted => Settled::Moved,
            SendResult::Refused(why) => Settled::Failed(why.clone()),
            SendResult::Unanswered => Settled::Failed("neither accepted nor refused".to_owned()),
        }
    }
}

/// What `SendMessageBatch` said of entry `id`, given the entries it refused (with the
/// reason, from [`refusal`]) and those it accepted; a refusal wins.
pub(crate) fn send_result(
    id: &str,
    refused: &HashMap<&str, String>,
    accepted: &HashSet<&str>,
) -> SendResult {
    if let Some(why) = refused.get(id) {
        SendResult::Refused(why.clone())
    } else if accepted.contains(id) {
        SendResult::Accepted
    } else {
        SendResult::Unanswered
    }
}

/// Splits messages of these sizes (bytes, as [`entry_size`] counts them) into
/// `SendMessageBatch` calls within [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_BYTES`],
/// keeping their order. Returns the batches (indexes into `sizes`) and the indexes of
/// messages too large for any batch, which are never sent.
pub fn plan_sends(sizes: &[usize]) -> (Vec<Vec<usize>>, Vec<usize>) {
    let size = |&i: &usize| sizes[i];
    runtime::batch::plan(
        0..sizes.len(),
        MAX_BATCH_ENTRIES,
        MAX_BATCH_BYTES,
        size,
        |_, _| false,
    )
}

/// The bytes a copy of `m` counts towards [`MAX_BATCH_BYTES`]: its body and the
/// attributes copied with it (name, data type and value of each).
pub(crate) fn entry_size(
    m: &Message,
    attributes: &HashMap<String, MessageAttributeValue>,
) -> usize {
    let body = m.body().map_or(0, str::len);
    let attributes: usize = attributes
        .iter()
        .map(|(name, v)| name.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
        .sum();
    body + attributes
}

/// The message's attributes minus the parking bookkeeping (reason, detail, source id),
/// which describes the parking, not the event. Binary attributes are not copied (see
/// the subscriber's `dlq_attributes`).
pub(crate) fn original_attributes(
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
) -> HashMap<String, MessageAttributeValue> {
    attributes
        .into_iter()
        .flatten()
        .filter(|(name, _)| {
            ![
                REASON_ATTRIBUTE,
                DETAIL_ATTRIBUTE,
                SOURCE_MESSAGE_ID_ATTRIBUTE,
            ]
            .contains(&name.as_str())
        })
        .filter(|(_, v)| v.data_type().starts_with("String") || v.data_type().starts_with("Number"))
        .map(|(name, v)| {
            let copy = MessageAttributeValue::builder()
                .data_type(v.data_type())
                .set_string_value(v.string_value().map(str::to_owned))
                .build()
                .expect("data type is set");
            (name.clone(), copy)
        })
        .collect()
}

/// Whether `queue_url` names a FIFO queue (SQS requires the `.fifo` suffix).
pub(crate) fn is_fifo(queue_url: &str) -> bool {
    queue_url.ends_with(".fifo")
}

/// The `SendMessageBatch` entry `id` copying `m`: its body and
/// [`original_attributes`]; to a FIFO queue also its group and deduplication ids.
pub(crate) fn send_entry(id: usize, m: &Message, fifo: bool) -> SendMessageBatchRequestEntry {
    let system = m.attributes();
    let get = |name: MessageSystemAttributeName| system.and_then(|a| a.get(&name)).cloned();
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(m.body().unwrap_or_default())
        .set_message_attributes(Some(original_attributes(m.message_attributes())));
    if fifo {
        entry = entry
            .set_message_group_id(get(MessageSystemAttributeName::MessageGroupId))
            .set_message_deduplication_id(get(MessageSystemAttributeName::MessageDeduplicationId));
    }
    entry.build().expect("id and body are set")
}

/// What the report says of a parked message: its id, its parking reason
/// ([`NO_REASON`] without one), and its key and event type when the body decodes (the
/// event type also from the `event_type` attribute when it does not). The outcome is
/// left for [`settle`].
pub(crate) fn describe(m: &Message) -> Seen {
    let attribute = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    let event = m
        .body()
        .and_then(|b| subscriber::entity::decode_body(b).ok());
    Seen {
        message_id: m.message_id().unwrap_or_default().to_owned(),
        reason: attribute(REASON_ATTRIBUTE).unwrap_or_else(|| NO_REASON.to_owned()),
        key: event.as_ref().map(|e| e.key.clone()),
        event_type: event
            .as_ref()
            .map(|e| e.event_type.clone())
            .or_else(|| attribute("event_type")),
        outcome: String::new(),
    }
}

/// What the loop does after a receive brought no message it had not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterIdle {
    /// The DLQ holds only what this loop holds: everything was examined.
    Done,
    /// Messages this loop never saw are in the DLQ (invisible, in flight elsewhere):
    /// receive again.
    Wait,
    /// They stayed out of reach for the whole in-flight wait: stop and report them.
    GiveUp { remaining: u64 },
}

/// Decides whether the loop has examined every message: `in_dlq` is the DLQ's
/// visible plus invisible count, `held` the messages this loop holds invisible
/// itself, `idle_for` the time since a receive last brought an unseen message.
pub(crate) fn after_idle(
    in_dlq: u64,
    held: u64,
    idle_for: Duration,
    in_flight_wait: Duration,
) -> AfterIdle {
    let unseen = in_dlq.saturating_sub(held);
    if unseen == 0 {
        AfterIdle::Done
    } else if idle_for >= in_flight_wait {
        AfterIdle::GiveUp { remaining: unseen }
    } else {
        AfterIdle::Wait
    }
}

/// Where a `StartMessageMoveTask` stands, from its listed status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TaskStep {
    /// Still moving (or a status this tool does not know): look again.
    Running,
    /// Done: the report of the move.
    Completed(Report),
    /// `FAILED` or `CANCELLED`, with why.
    Failed(String),
}

/// The step of a move task listed with `status`, `moved` messages moved so far and
/// SQS's `failure_reason`.
pub(crate) fn task_step(status: &str, moved: u64, failure_reason: Option<&str>) -> TaskStep {
    match status {
        "COMPLETED" => TaskStep::Completed(Report {
            method: "StartMessageMoveTask".into(),
            moved,
            examined: moved,
            ..Report::default()
        }),
        "FAILED" | "CANCELLED" => TaskStep::Failed(format!(
            "task {status} after {moved} messages: {}",
            failure_reason.unwrap_or("no reason given")
        )),
        _ => TaskStep::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    fn options() -> Options {
        Options {
            dlq_url: "http://sqs/dlq".into(),
            queue_url: "http://sqs/q".into(),
            reasons: Vec::new(),
            dry_run: false,
            rate: None,
            max: None,
            method: Method::Auto,
            hold: Duration::from_secs(60),
            in_flight_wait: Duration::from_secs(60),
        }
    }

    fn string(value: &str) -> MessageAttributeValue {
        typed("String", value)
    }

    fn typed(data_type: &str, value: &str) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(value)
            .build()
            .unwrap()
    }

    fn message(id: &str, handle: &str) -> Message {
        Message::builder()
            .message_id(id)
            .receipt_handle(handle)
            .body("{}")
            .build()
    }

    fn seen(reason: &str) -> Seen {
        Seen {
            message_id: "m-1".into(),
            reason: reason.into(),
            key: None,
            event_type: None,
            outcome: String::new(),
        }
    }

    #[test]
    fn batches_never_exceed_the_total_size_sqs_accepts() {
        let sizes = [100 * KIB, 100 * KIB, 100 * KIB, 10 * KIB, 250 * KIB];
        let (batches, too_large) = plan_sends(&sizes);
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(too_large.is_empty());
        for batch in &batches {
            let total: usize = batch.iter().map(|&i| sizes[i]).sum();
            assert!(total <= MAX_BATCH_BYTES, "{batch:?}: {total} bytes");
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries_in_order() {
        let (batches, _) = plan_sends(&[10; 23]);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 3]
        );
        assert_eq!(batches.concat(), (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn an_entry_over_the_limit_is_reported_and_never_sent() {
        let (batches, too_large) = plan_sends(&[KIB, MAX_BATCH_BYTES + 1, MAX_BATCH_BYTES]);
        assert_eq!(too_large, vec![1]);
        assert_eq!(batches, vec![vec![0], vec![2]]);
        assert_eq!(plan_sends(&[]), (Vec::<Vec<usize>>::new(), Vec::new()));
    }

    #[test]
    fn an_empty_receive_ends_the_loop_only_when_the_dlq_holds_nothing_unseen() {
        let wait = Duration::from_secs(60);
        // Everything left is what the loop holds itself (kept, dry run).
        assert_eq!(after_idle(3, 3, Duration::ZERO, wait), AfterIdle::Done);
        assert_eq!(after_idle(0, 0, Duration::ZERO, wait), AfterIdle::Done);
        // SQS's approximate count below what the loop holds is not negative.
        assert_eq!(after_idle(2, 3, Duration::ZERO, wait), AfterIdle::Done);
        // Two messages in flight elsewhere: wait for them to come back.
        assert_eq!(
            after_idle(5, 3, Duration::from_secs(5), wait),
            AfterIdle::Wait
        );
        // They stayed away for the whole wait: reported, not ignored.
        assert_eq!(
            after_idle(5, 3, Duration::from_secs(60), wait),
            AfterIdle::GiveUp { remaining: 2 }
        );
    }

    #[test]
    fn only_an_unfiltered_unlimited_real_auto_redrive_uses_the_move_task() {
        assert!(uses_move_task(&options()));
        let with = |f: fn(&mut Options)| {
            let mut o = options();
            f(&mut o);
            uses_move_task(&o)
        };
        assert!(!with(|o| o.method = Method::Loop));
        assert!(!with(|o| o.reasons = vec!["apply_rejected".into()]));
        assert!(!with(|o| o.dry_run = true));
        assert!(!with(|o| o.max = Some(5)));
        // The rate alone does not rule it out: the task takes a rate of its own.
        assert!(with(|o| o.rate = Some(10)));
    }

    #[test]
    fn the_hold_is_a_positive_visibility_timeout() {
        assert_eq!(hold_secs(Duration::from_secs(90)), 90);
        assert_eq!(hold_secs(Duration::ZERO), 1);
        assert_eq!(hold_secs(Duration::from_millis(400)), 1);
        assert_eq!(hold_secs(Duration::from_secs(u64::MAX)), FALLBACK_HOLD_SECS);
    }

    #[test]
    fn receiving_stops_once_max_messages_moved() {
        assert!(!reached_max(None, u64::MAX));
        assert!(!reached_max(Some(3), 2));
        assert!(reached_max(Some(3), 3));
        assert!(reached_max(Some(3), 4));
    }

    #[test]
    fn a_receive_yields_unseen_messages_and_rehands_held_ones() {
        let mut seen = HashSet::new();
        let mut held = HashMap::new();
        let first = fresh_messages(
            vec![
                message("a", "h-a1"),
                message("b", "h-b1"),
                Message::builder().message_id("no-handle").build(),
                Message::builder().receipt_handle("no-id").build(),
            ],
            &mut seen,
            &mut held,
        );
        let ids: Vec<_> = first.iter().filter_map(Message::message_id).collect();
        assert_eq!(ids, vec!["a", "b"]);
        // "a" is kept (held), "b" was moved but its delete failed: both come back.
        held.insert("a".to_owned(), "h-a1".to_owned());
        let again = fresh_messages(
            vec![
                message("a", "h-a2"),
                message("b", "h-b2"),
                message("c", "h-c1"),
            ],
            &mut seen,
            &mut held,
        );
        let ids: Vec<_> = again.iter().filter_map(Message::message_id).collect();
        assert_eq!(ids, vec!["c"], "only the new one is examined");
        assert_eq!(held.get("a").map(String::as_str), Some("h-a2"));
        assert!(
            !held.contains_key("b"),
            "a message not held is not taken up"
        );
    }

    #[test]
    fn without_a_filter_every_message_moves() {
        let o = options();
        assert_eq!(triage(&o, 0, 0, "apply_rejected"), Triage::Move);
        assert_eq!(triage(&o, 1_000, 9, NO_REASON), Triage::Move);
    }

    #[test]
    fn a_reason_filter_keeps_the_other_reasons_and_none_selects_unreasoned() {
        let mut o = options();
        o.reasons = vec!["apply_rejected".into(), NO_REASON.into()];
        assert_eq!(triage(&o, 0, 0, "apply_rejected"), Triage::Move);
        assert_eq!(triage(&o, 0, 0, NO_REASON), Triage::Move);
        assert_eq!(triage(&o, 0, 0, "malformed_json"), Triage::Keep);
        // Reasons match exactly, not by prefix or case.
        assert_eq!(triage(&o, 0, 0, "apply"), Triage::Keep);
        assert_eq!(triage(&o, 0, 0, "Apply_Rejected"), Triage::Keep);
    }

    #[test]
    fn a_dry_run_would_move_the_selected_and_keeps_the_rest() {
        let mut o = options();
        o.dry_run = true;
        o.reasons = vec!["apply_rejected".into()];
        assert_eq!(triage(&o, 0, 0, "apply_rejected"), Triage::WouldMove);
        assert_eq!(triage(&o, 0, 0, "malformed_json"), Triage::Keep);
    }

    #[test]
    fn max_counts_the_moved_and_the_queued_alike() {
        let mut o = options();
        o.max = Some(3);
        assert_eq!(triage(&o, 0, 2, "r"), Triage::Move);
        assert_eq!(triage(&o, 2, 0, "r"), Triage::Move);
        assert_eq!(triage(&o, 1, 2, "r"), Triage::Keep);
        assert_eq!(triage(&o, 3, 0, "r"), Triage::Keep);
        o.dry_run = true;
        assert_eq!(triage(&o, 2, 0, "r"), Triage::WouldMove);
        assert_eq!(triage(&o, 3, 0, "r"), Triage::Keep);
    }

    #[test]
    fn the_report_counts_each_settled_message_once_under_its_outcome() {
        let mut report = Report::default();
        assert_eq!(
            settle(&mut report, seen("a"), &Settled::Moved).outcome,
            "moved"
        );
        assert_eq!(
            settle(&mut report, seen("a"), &Settled::WouldMove).outcome,
            "would-move"
        );
        assert_eq!(
            settle(&mut report, seen("b"), &Settled::Moved).outcome,
            "moved"
        );
        assert_eq!(
            settle(&mut report, seen("c"), &Settled::Kept).outcome,
            "kept"
        );
        let failed = settle(&mut report, seen("d"), &too_large(300_000));
        assert_eq!(
            failed.outcome,
            format!("failed: 300000 bytes, more than the {MAX_BATCH_BYTES} SQS accepts")
        );
        assert_eq!(
            (report.moved, report.kept, report.failed),
            (3, 1, 1),
            "{report:?}"
        );
        let by_reason: Vec<_> = report
            .by_reason
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect();
        assert_eq!(
            by_reason,
            vec![("a", 2), ("b", 1)],
            "kept and failed are not by reason"
        );
        assert_eq!(report.messages.len(), 5);
        // `examined` is the loop's count of messages received, not of settlements.
        assert_eq!(report.examined, 0);
    }

    #[test]
    fn every_message_but_a_moved_one_stays_held_in_the_dlq() {
        assert!(!Settled::Moved.stays());
        assert!(Settled::WouldMove.stays());
        assert!(Settled::Kept.stays());
        assert!(Settled::Failed("x".into()).stays());
    }

    #[test]
    fn a_copy_is_deleted_only_when_the_queue_accepted_it() {
        let refused: HashMap<&str, String> =
            [("1", refusal("InvalidMessageContents", Some("bad char")))].into();
        let accepted: HashSet<&str> = ["0", "1"].into();
        assert_eq!(send_result("0", &refused, &accepted), SendResult::Accepted);
        assert_eq!(
            send_result("0", &refused, &accepted).settled(),
            Settled::Moved
        );
        // Refused wins even if SQS also listed it as accepted.
        let result = send_result("1", &refused, &accepted);
        assert_eq!(
            result,
            SendResult::Refused("InvalidMessageContents: bad char".into())
        );
        assert_eq!(
            result.settled().label(),
            "failed: InvalidMessageContents: bad char"
        );
        let result = send_result("2", &refused, &accepted);
        assert_eq!(result, SendResult::Unanswered);
        assert_eq!(
            result.settled(),
            Settled::Failed("neither accepted nor refused".into())
        );
        assert!(result.settled().stays());
        assert_eq!(refusal("Throttled", None), "Throttled: ");
    }

    #[test]
    fn the_copy_drops_the_parking_bookkeeping_and_binary_attributes() {
        let binary = MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![1, 2]))
            .build()
            .unwrap();
        let attributes: HashMap<String, MessageAttributeValue> = [
            (REASON_ATTRIBUTE.to_owned(), string("apply_rejected")),
            (DETAIL_ATTRIBUTE.to_owned(), string("why")),
            (SOURCE_MESSAGE_ID_ATTRIBUTE.to_owned(), string("src-1")),
            ("event_type".to_owned(), string("profile.upserted")),
            ("schema_version".to_owned(), typed("Number", "2")),
            ("tenant".to_owned(), typed("String.tenant", "acme")),
            ("blob".to_owned(), binary),
        ]
        .into();
        let copy = original_attributes(Some(&attributes));
        let mut names: Vec<&str> = copy.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["event_type", "schema_version", "tenant"]);
        assert_eq!(copy["schema_version"], typed("Number", "2"));
        assert_eq!(copy["tenant"], typed("String.tenant", "acme"));
        assert!(original_attributes(None).is_empty());
    }

    #[test]
    fn an_entry_counts_its_body_and_each_copied_attribute() {
        let m = Message::builder().body("x".repeat(100)).build();
        let attributes: HashMap<String, MessageAttributeValue> =
            [("event_type".to_owned(), string("profile.upserted"))].into();
        // body 100 + name 10 + data type 6 + value 16
        assert_eq!(entry_size(&m, &attributes), 132);
        assert_eq!(entry_size(&Message::builder().build(), &HashMap::new()), 0);
    }

    #[test]
    fn a_fifo_copy_keeps_its_group_and_deduplication_ids() {
        let m = Message::builder()
            .message_id("m-1")
            .body("body")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g-1")
            .attributes(MessageSystemAttributeName::MessageDeduplicationId, "d-1")
            .message_attributes(REASON_ATTRIBUTE, string("apply_rejected"))
            .message_attributes("event_type", string("profile.deleted"))
            .build();
        assert!(is_fifo("http://sqs/000000000000/analytics.fifo"));
        assert!(!is_fifo("http://sqs/000000000000/analytics"));
        let entry = send_entry(3, &m, true);
        assert_eq!(entry.id(), "3");
        assert_eq!(entry.message_body(), "body");
        assert_eq!(entry.message_group_id(), Some("g-1"));
        assert_eq!(entry.message_deduplication_id(), Some("d-1"));
        let names: Vec<&String> = entry.message_attributes().unwrap().keys().collect();
        assert_eq!(names, vec!["event_type"]);
        let standard = send_entry(0, &m, false);
        assert_eq!(standard.message_group_id(), None);
        assert_eq!(standard.message_deduplication_id(), None);
    }

    #[test]
    fn a_parked_event_is_described_by_its_reason_key_and_type() {
        let body = include_str!("../../../contracts/fixtures/v2/upserted.json");
        let m = Message::builder()
            .message_id("m-1")
            .body(body)
            .message_attributes(REASON_ATTRIBUTE, string("apply_rejected"))
            .build();
        let s = describe(&m);
        assert_eq!(s.message_id, "m-1");
        assert_eq!(s.reason, "apply_rejected");
        assert_eq!(s.key.as_deref(), Some("u-0001"));
        assert_eq!(s.event_type.as_deref(), Some("profile.upserted"));
        assert_eq!(s.outcome, "");
    }

    #[test]
    fn an_undecodable_message_without_a_reason_is_described_from_its_attributes() {
        let m = Message::builder()
            .message_id("m-2")
            .body("not json")
            .message_attributes("event_type", string("profile.deleted"))
            .build();
        let s = describe(&m);
        assert_eq!(s.reason, NO_REASON);
        assert_eq!(s.key, None);
        assert_eq!(s.event_type.as_deref(), Some("profile.deleted"));
        let bare = describe(&Message::builder().build());
        assert_eq!((bare.message_id.as_str(), bare.event_type), ("", None));
    }

    #[test]
    fn a_move_task_ends_completed_or_failed_and_runs_otherwise() {
        let TaskStep::Completed(report) = task_step("COMPLETED", 42, None) else {
            panic!("completed");
        };
        assert_eq!(report.method, "StartMessageMoveTask");
        assert_eq!((report.moved, report.examined), (42, 42));
        assert_eq!((report.kept, report.failed, report.remaining), (0, 0, 0));
        assert_eq!(
            task_step("FAILED", 7, Some("AccessDenied")),
            TaskStep::Failed("task FAILED after 7 messages: AccessDenied".into())
        );
        assert_eq!(
            task_step("CANCELLED", 0, None),
            TaskStep::Failed("task CANCELLED after 0 messages: no reason given".into())
        );
        assert_eq!(task_step("RUNNING", 3, None), TaskStep::Running);
        assert_eq!(task_step("CANCELLING", 3, None), TaskStep::Running);
        assert_eq!(task_step("UNKNOWN", 0, None), TaskStep::Running);
    }
}
