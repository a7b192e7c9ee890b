#!/usr/bin/env python3
"""Writes the bad-input corpus (tests/corpus/). Run from anywhere; it rewrites every file.

The files are committed: this script only documents how the larger or repetitive ones
were made, so a reader can see what each is without opening it. Layout:

  subscriber/<reason>/<what>.body    an SQS message body; <reason> is the
                                     `tributary-reason` the subscriber must park it with
  publisher/table/<reason>/<what>.json   a DynamoDB item (DynamoDB JSON) written through
                                     the real table; the failure queue must get <reason>
  publisher/record/<reason>/<what>.json  a stream record (the failure queue's JSON
                                     shape) that DynamoDB itself cannot produce, fed to
                                     the record decoder directly
Every key starts with `corpus-`, so a test can tell them from good traffic.
"""
import json, os, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
GOOD = {
    "event_id": "corpus-event-0001",
    "event_type": "profile.upserted",
    "schema_version": 2,
    "key": "corpus-u-1",
    "generation": 1795167000123456,
    "version": 7,
    "occurred_at": "2026-11-25T01:02:03.5Z",
    "published_at": "2026-11-25T01:02:03.9Z",
    "source": {"table": "profiles",
               "stream_arn": "arn:aws:dynamodb:eu-west-1:123456789012:table/profiles/stream/2026-11-25T00:00:00.000",
               "sequence_number": "300000000001234567890"},
    "data": {"user_id": "corpus-u-1", "email": "ada@example.com", "display_name": "Ada Lovelace",
             "country": "GB", "plan": "pro",
             "consents": {"marketing_email": True, "marketing_sms": False},
             "locale": "en-GB", "time_zone": None,
             "lifetime_value_cents": "98765432109876543210987654321098765432",
             "created_at": "2026-11-20T09:30:00.123456Z", "updated_at": "2026-11-25T01:02:03.5Z"},
}
V1 = {k: v for k, v in GOOD.items()}
V1["schema_version"] = 1
V1["data"] = {k: v for k, v in GOOD["data"].items() if k not in ("consents", "time_zone")}
V1["data"]["marketing_opt_in"] = True

n = [0]
def ev(**changes):
    """The good event with top-level changes; a fresh key per file."""
    n[0] += 1
    e = json.loads(json.dumps(GOOD))
    key = f"corpus-u-{n[0]}"
    e["key"] = key
    e["data"]["user_id"] = key
    e["event_id"] = f"corpus-event-{n[0]}"
    for k, v in changes.items():
        if v is DROP:
            e.pop(k, None)
        else:
            e[k] = v
    return e
def data(e, **changes):
    for k, v in changes.items():
        if v is DROP:
            e["data"].pop(k, None)
        else:
            e["data"][k] = v
    return e
DROP = object()
def sns(message, **over):
    env = {"Type": "Notification", "MessageId": "5f1e2d3c-0000-4000-8000-000000000001",
           "TopicArn": "arn:aws:sns:us-east-1:123456789012:profile-changes",
           "Message": message, "Timestamp": "2026-11-25T01:02:04.000Z",
           "SignatureVersion": "1", "Signature": "c2lnbmF0dXJl",
           "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem"}
    for k, v in over.items():
        if v is DROP:
            env.pop(k, None)
        else:
            env[k] = v
    return json.dumps(env)
j = json.dumps

def nested(depth, leaf='"x"'):
    return "[" * depth + leaf + "]" * depth

sub = {
  "malformed_json": {
    "not-json-at-all": "this is not json",
    "truncated-half": j(ev())[: len(j(ev())) // 2],
    "truncated-before-last-brace": j(ev())[:-1],
    "whitespace-only-body": "   \n\t  ",
    "json-null": "null",
    "json-number": "42",
    "json-string": j("a string"),
    "json-array-of-events": j([ev(), ev()]),
    "trailing-garbage": j(ev()) + " trailing",
    "two-objects-concatenated": j(ev()) + j(ev()),
    "single-quoted-keys": j(ev()).replace('"', "'"),
    "lone-high-surrogate-escape": j(ev()).replace('"Ada Lovelace"', '"Ada \\ud800 Lovelace"'),
    "lone-low-surrogate-escape": j(ev()).replace('"Ada Lovelace"', '"Ada \\udc00"'),
    "invalid-escape-sequence": j(ev()).replace('"Ada Lovelace"', '"Ada \\x41"'),
    "unescaped-tab-in-string": j(ev()).replace('"Ada Lovelace"', '"Ada\tLovelace"'),
    "nested-10000-deep-array": nested(10000),
    "nan-literal": j(ev()).replace('"version": 8', '"version": NaN').replace('"version": 7', '"version": NaN'),
    "byte-order-mark": "\ufeff" + j(ev()),
    "sns-envelope-with-truncated-message": sns(j(ev())[:40]),
    "sns-envelope-truncated": sns(j(ev()))[:-10],
  },
  "missing_schema_version": {
    "empty-object": "{}",
    "no-schema-version-field": j(ev(schema_version=DROP)),
    "schema-version-as-string": j(ev(schema_version="2")),
    "schema-version-negative": j(ev(schema_version=-1)),
    "schema-version-fraction": j(ev(schema_version=2.5)),
    "schema-version-null": j(ev(schema_version=None)),
    "schema-version-beyond-u64": j(ev()).replace('"schema_version": 2', '"schema_version": 18446744073709551616'),
    "body-for-another-topic-order-placed": j({"order_id": 7, "total": "12.50", "currency": "EUR"}),
    "sns-wrapped-body-for-another-topic": sns(j({"invoice": "INV-1", "amount_cents": 1200}),
                                              TopicArn="arn:aws:sns:us-east-1:123456789012:invoices"),
  },
  "unsupported_schema_version": {
    "newer-schema-version-3": j(ev(schema_version=3)),
    "far-future-schema-version": j(ev(schema_version=4000000000)),
    "schema-version-zero": j(ev(schema_version=0)),
    "sns-wrapped-newer-version": sns(j(ev(schema_version=3))),
  },
  "schema_mismatch": {
    # Valid JSON (names SHOULD be unique, RFC 8259), but the contract allows one key.
    "duplicate-key": j(ev())[:-1] + ', "key": "corpus-other"}',
    # The type is wrong at the first '[', before any depth limit is reached.
    "display-name-nested-200-deep": j(ev()).replace('"Ada Lovelace"', nested(200)),
    "unknown-event-type": j(ev(event_type="profile.merged")),
    "missing-event-id": j(ev(event_id=DROP)),
    "missing-key": j(ev(key=DROP)),
    "missing-data-email": j(data(ev(), email=DROP)),
    "version-as-string": j(ev(version="7")),
    "version-beyond-i64": j(ev()).replace('"version": 7', '"version": 9223372036854775808'),
    "generation-beyond-i64": j(ev()).replace('"generation": 1795167000123456', '"generation": 99999999999999999999'),
    "version-fraction": j(ev(version=7.5)),
    "lifetime-value-39-digits": j(data(ev(), lifetime_value_cents="9" * 39)),
    "lifetime-value-as-json-number": j(data(ev(), lifetime_value_cents=12345)),
    "lifetime-value-not-a-number": j(data(ev(), lifetime_value_cents="12,50")),
    "lifetime-value-1000-digits": j(data(ev(), lifetime_value_cents="1" * 1000)),
    "occurred-at-not-a-timestamp": j(ev(occurred_at="yesterday")),
    "occurred-at-epoch-number": j(ev(occurred_at=1795167000)),
    "consent-as-string": j(data(ev(), consents={"marketing_email": "yes", "marketing_sms": False})),
    "unknown-top-level-field": j(ev(priority="high")),
    "unknown-data-field-huge": j(data(ev(), biography="x" * 150_000)),
    "unknown-field-nested-100-deep": j(ev(extra=json.loads(nested(100)))),
    "data-is-a-string": j(ev(data="corpus-u")),
    "v2-body-claiming-v1": j(ev(schema_version=1)),
    "v1-body-claiming-v2": j(dict(V1, schema_version=2, key="corpus-v1", event_id="corpus-v1",
                                    data=dict(V1["data"], user_id="corpus-v1"))),
    "deleted-reason-unknown": j(ev(event_type="profile.deleted", reason="gdpr", data=None)),
  },
  "invalid_event": {
    "empty-event-id": j(ev(event_id="")),
    "empty-key": j(data(ev(key=""), user_id="")),
    "huge-event-id": j(ev(event_id="e" * 100_000)),
    "huge-key": j(data(ev(key="k" * 100_000), user_id="k" * 100_000)),
    "key-differs-from-user-id": j(data(ev(), user_id="corpus-someone-else")),
    "negative-version": j(ev(version=-3)),
    "upsert-without-data": j(ev(data=None)),
    "delete-with-data": j(ev(event_type="profile.deleted", reason="deleted")),
    "delete-without-reason": j(ev(event_type="profile.deleted", data=None)),
    "upsert-with-reason": j(ev(reason="deleted")),
  },
  "bad_sns_envelope": {
    "subscription-confirmation": sns("You have chosen to subscribe", Type="SubscriptionConfirmation"),
    "unsubscribe-confirmation": sns("unsubscribed", Type="UnsubscribeConfirmation"),
    "type-lowercase-notification": sns(j(ev()), Type="notification"),
    "type-missing": sns(j(ev()), Type=DROP),
    "type-is-a-number": sns(j(ev()), Type=1),
    "message-missing": sns(j(ev()), Message=DROP),
    "message-is-an-object": sns(ev()),
    "message-is-null": sns(None),
    "message-is-a-number": sns(42),
  },
  "apply_rejected": {
    "nul-character-in-display-name": j(data(ev(), display_name="Ada\u0000Lovelace")),
    "nul-character-in-email": j(data(ev(), email="ada\u0000@example.com")),
  },
}

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)

shutil.rmtree(os.path.join(HERE, "subscriber"), ignore_errors=True)
for reason, files in sub.items():
    for what, body in files.items():
        write(os.path.join(HERE, "subscriber", reason, what + ".body"), body)

# ---- publisher: items written through the real table (DynamoDB JSON) ----------------
def item(**changes):
    it = {"user_id": {"S": "corpus-p"}, "email": {"S": "grace@example.com"},
          "display_name": {"S": "Grace Hopper"}, "country": {"S": "US"}, "plan": {"S": "free"},
          "marketing_email": {"BOOL": True}, "marketing_sms": {"BOOL": False},
          "locale": {"S": "en-US"}, "time_zone": {"S": "America/New_York"},
          "lifetime_value_cents": {"N": "12345"},
          "created_at": {"S": "2026-11-20T09:30:00.123456Z"},
          "updated_at": {"S": "2026-11-25T01:02:03.5Z"}, "version": {"N": "1"}}
    for k, v in changes.items():
        if v is DROP:
            it.pop(k, None)
        else:
            it[k] = v
    return it
table = {
  "wrong_attribute_type": {
    "version-as-string": item(version={"S": "1"}),
    "email-as-number": item(email={"N": "42"}),
    "email-as-string-set": item(email={"SS": ["a@example.com", "b@example.com"]}),
    "display-name-as-binary": item(display_name={"B": "R3JhY2U="}),
    "display-name-as-binary-set": item(display_name={"BS": ["R3JhY2U=", "SG9wcGVy"]}),
    "marketing-email-as-string": item(marketing_email={"S": "true"}),
    "marketing-sms-as-number": item(marketing_sms={"N": "1"}),
    "lifetime-value-as-number-set": item(lifetime_value_cents={"NS": ["1", "2"]}),
    "lifetime-value-as-list": item(lifetime_value_cents={"L": [{"N": "1"}]}),
    "plan-as-map": item(plan={"M": {"tier": {"S": "pro"}}}),
    "created-at-as-number": item(created_at={"N": "1795167000"}),
    "country-as-bool": item(country={"BOOL": False}),
  },
  "missing_attribute": {
    "no-email": item(email=DROP),
    "no-created-at": item(created_at=DROP),
    "no-version": item(version=DROP),
    "plan-is-null": item(plan={"NULL": True}),
  },
  "bad_attribute_value": {
    "created-at-not-a-timestamp": item(created_at={"S": "last tuesday"}),
    "updated-at-without-offset": item(updated_at={"S": "2026-11-25T01:02:03"}),
    "version-negative": item(version={"N": "-1"}),
    "version-fraction": item(version={"N": "1.5"}),
    "version-beyond-i64": item(version={"N": "9223372036854775808"}),
    "version-huge-exponent": item(version={"N": "1E+40"}),
  },
  "message_too_large": {
    "display-name-300-kib": item(display_name={"S": "G" * 300_000}),
  },
}
shutil.rmtree(os.path.join(HERE, "publisher"), ignore_errors=True)
for reason, files in table.items():
    for what, it in files.items():
        write(os.path.join(HERE, "publisher", "table", reason, what + ".json"), json.dumps(it, indent=1) + "\n")
# Good items with odd extra attributes the contract does not carry: they must publish.
good = {
  "extra-binary-attribute": item(avatar={"B": "iVBORw0KGgo="}),
  "extra-set-attributes": item(tags={"SS": ["a", "b"]}, scores={"NS": ["1", "2.5"]}, blobs={"BS": ["AAE="]}),
  "extra-nested-map-and-list": item(prefs={"M": {"a": {"L": [{"N": "1"}, {"NULL": True}, {"M": {"b": {"BOOL": False}}}]}}}),
  # (Not an empty map inside a list: DynamoDB Local streams it as `{}`, which the AWS
  # SDK cannot parse, so GetRecords of that page fails for ever. Real DynamoDB writes
  # {"M": {}}. See the closing note of issue 5.)
  "optional-fields-null": item(country={"NULL": True}, locale={"NULL": True}, time_zone={"NULL": True},
                               lifetime_value_cents={"NULL": True}, marketing_sms={"NULL": True}),
  "lifetime-value-38-digits-negative-exponent": item(lifetime_value_cents={"N": "-9.9999999999999999999999999999999999999E-100"}),
  "unicode-everywhere": item(display_name={"S": "Grâce 🐛 Hóppér \u202e"}),
}
for what, it in good.items():
    write(os.path.join(HERE, "publisher", "table", "published", what + ".json"), json.dumps(it, indent=1) + "\n")

# ---- publisher: stream records DynamoDB itself never produces ------------------------
def rec(event_name="Insert", keys=None, new=None, old=None, **extra):
    r = {"event_id": "corpus-record", "event_name": event_name,
         "keys": keys if keys is not None else {"user_id": {"S": "corpus-r"}},
         "new_image": new, "old_image": old, "sequence_number": "1000",
         "approximate_creation": None, "user_identity": None}
    r.update(extra)
    return r
def sitem(**changes):
    """item() in the decoder's own serde shape."""
    def conv(v):
        (t, x), = v.items()
        return {"S": ("S", x), "N": ("N", x), "BOOL": ("Bool", x), "NULL": ("Null", None),
                "SS": ("Ss", x), "NS": ("Ns", x)}[t]
    out = {}
    for k, v in item(**changes).items():
        t, x = conv(v)
        out[k] = "Null" if t == "Null" else {t: x}
    out["user_id"] = {"S": "corpus-r"}
    return out
records = {
  "missing_attribute": {
    "no-key-at-all": rec(keys={}, new=sitem()),
    "key-attribute-renamed": rec(keys={"id": {"S": "corpus-r"}}, new=sitem()),
  },
  "wrong_attribute_type": {
    "key-as-number": rec(keys={"user_id": {"N": "7"}}, new=sitem()),
    "key-as-binary": rec(keys={"user_id": {"B": [1, 2, 3]}}, new=sitem()),
    "version-of-a-type-newer-than-this-build": rec(new=dict(sitem(), version="Unsupported")),
    "remove-whose-old-version-is-a-string": rec("Remove", old=dict(sitem(), version={"S": "3"})),
  },
  "missing_image": {
    "insert-without-new-image": rec("Insert"),
    "modify-without-new-image": rec("Modify", old=sitem()),
    "remove-without-old-image-keys-only-stream": rec("Remove"),
  },
  "key_mismatch": {
    "item-user-id-differs-from-key": rec(keys={"user_id": {"S": "corpus-other"}}, new=sitem()),
  },
  "unsupported_event_name": {
    "event-name-unknown": rec("Unsupported", new=sitem()),
  },
}
for reason, files in records.items():
    for what, r in files.items():
        write(os.path.join(HERE, "publisher", "record", reason, what + ".json"), json.dumps(r, indent=1) + "\n")
# Good records of every kind, so the decoder test (and the fuzzer's seeds) cover the
# accepting paths too.
good_records = {
  "insert": rec("Insert", new=sitem()),
  "modify-changing-the-plan": rec("Modify", new=dict(sitem(), plan={"S": "pro"}, version={"N": "2"}), old=sitem()),
  "remove": rec("Remove", old=sitem()),
  "remove-by-ttl": rec("Remove", old=sitem(), user_identity=["Service", "dynamodb.amazonaws.com"]),
  "insert-without-event-id": rec("Insert", new=sitem(), event_id=None),
  "insert-with-binary-and-set-extras": rec("Insert", new=dict(sitem(), avatar={"B": [137, 80, 78, 71]},
                                                              tags={"Ss": ["a", "b"]}, blobs={"Bs": [[0], [1, 2]]},
                                                              odd="Unsupported")),
}
for what, r in good_records.items():
    write(os.path.join(HERE, "publisher", "record", "published", what + ".json"), json.dumps(r, indent=1) + "\n")
