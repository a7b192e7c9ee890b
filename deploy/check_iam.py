#!/usr/bin/env python3
"""Fails (exit 1) if a CloudFormation/SAM template grants anything by wildcard.

Every IAM policy statement anywhere in the template (roles, inline and managed
policies, queue and topic policies, SAM `Policies`) must name its actions and
resources:
  - no `*` in any action (neither `*` nor `sqs:*` nor `sqs:Send*`), no `NotAction`;
  - no resource that is `*` or holds a `*`, no `NotResource`; a `Fn::GetAtt` of a
    resource's `Arn` is accepted (a log group's ARN ends in `:*` by AWS's own
    definition: it is that group's streams, nothing wider), and so is exactly
    `!Sub "${B.Arn}/*"` where B is an AWS::S3::Bucket declared in the same template
    (the objects of that one bucket: S3 has no other way to name them);
  - no `*` principal in an Allow (a Deny to `*` with a condition grants nothing: it is
    how a resource policy refuses everyone but the named senders, or requests without
    TLS);
  - one exception to the resource rule, and only it: an Allow whose every action is one
    that takes no resource (RESOURCELESS_ACTIONS, each with its source) may name exactly
    `Resource: "*"`, the only resource such an action can be granted on;
  - no AWS managed policy ARNs or SAM policy templates, whose content this check
    cannot see.

Usage: check_iam.py TEMPLATE...   (needs PyYAML; scripts/lambda-tools.sh installs it
with cfn-lint). Prints one line per finding.
"""

import sys

import yaml


class CfnLoader(yaml.SafeLoader):
    """Reads the short intrinsic-function tags (!Ref, !Sub, !GetAtt, …)."""


def _intrinsic(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else "Fn::" + suffix
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)

# Actions whose "Resource types" column in the Service Authorization Reference is empty:
# they can only be granted on "*".
RESOURCELESS_ACTIONS = {
    # https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html
    # (needed by a Lambda DynamoDB-stream event-source mapping's execution role)
    "dynamodb:ListStreams",
}


def as_list(value):
    return value if isinstance(value, list) else [value]


def literal_strings(value):
    """Every literal string inside a value, intrinsic functions included (the
    template text of a !Sub, the parts of a !Join)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from literal_strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k == "Fn::GetAtt":
                continue  # a resource's attribute, never a wildcard we wrote
            yield from literal_strings(v)


# Logical ids of the template's own S3 buckets (set by `check`).
BUCKETS = set()


def objects_of_own_bucket(resource):
    """True for exactly `{"Fn::Sub": "${B.Arn}/*"}` with B one of the template's buckets."""
    if not (isinstance(resource, dict) and list(resource) == ["Fn::Sub"]):
        return False
    text = resource["Fn::Sub"]
    if not (isinstance(text, str) and text.startswith("${") and text.endswith(".Arn}/*")):
        return False
    return text[2 : -len(".Arn}/*")] in BUCKETS


def check_statement(where, statement, findings):
    if not isinstance(statement, dict):
        findings.append(f"{where}: statement is not a mapping")
        return
    for forbidden in ("NotAction", "NotResource", "NotPrincipal"):
        if forbidden in statement:
            findings.append(f"{where}: {forbidden} grants by exclusion")
    for action in as_list(statement.get("Action", [])):
        for text in literal_strings(action):
            if "*" in text:
                findings.append(f"{where}: wildcard action {text!r}")
    actions = as_list(statement.get("Action", []))
    resourceless = (
        statement.get("Effect") == "Allow"
        and bool(actions)
        and all(isinstance(a, str) and a in RESOURCELESS_ACTIONS for a in actions)
        and statement.get("Resource") in ("*", ["*"])
    )
    if "Resource" in statement:
        for resource in [] if resourceless else as_list(statement["Resource"]):
            if objects_of_own_bucket(resource):
                continue
            for text in literal_strings(resource):
                if "*" in text:
                    findings.append(f"{where}: wildcard resource {text!r}")
    elif "Principal" not in statement:
        findings.append(f"{where}: statement without Resource")
    principal = statement.get("Principal")
    if principal is not None and statement.get("Effect") != "Deny":
        for text in literal_strings(principal):
            if text == "*":
                findings.append(f"{where}: wildcard principal")


def walk(where, node, findings):
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}"
            if key == "Statement":
                for i, statement in enumerate(as_list(value)):
                    check_statement(f"{path}[{i}]", statement, findings)
            elif key == "ManagedPolicyArns" and value:
                findings.append(f"{path}: managed policies cannot be checked")
            elif key == "Policies" and isinstance(value, (list, str)):
                for i, policy in enumerate(as_list(value)):
                    if isinstance(policy, str) or (
                        isinstance(policy, dict)
                        and "PolicyDocument" not in policy
                        and "Statement" not in policy
                    ):
                        findings.append(
                            f"{path}[{i}]: managed policy or policy template cannot be checked"
                        )
                    else:
                        walk(f"{path}[{i}]", policy, findings)
            else:
                walk(path, value, findings)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(f"{where}[{i}]", value, findings)


def check(path):
    with open(path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    findings = []
    BUCKETS.clear()
    BUCKETS.update(
        name
        for name, resource in ((template or {}).get("Resources") or {}).items()
        if isinstance(resource, dict) and resource.get("Type") == "AWS::S3::Bucket"
    )
    walk("Resources", (template or {}).get("Resources", {}), findings)
    statements = sum(1 for _ in _statements(template))
    if statements == 0:
        findings.append("no IAM statement found: nothing was checked")
    return findings


def _statements(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Statement":
                yield from as_list(value)
            else:
                yield from _statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from _statements(value)


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        findings = check(path)
        for finding in findings:
            print(f"{path}: {finding}")
        failed = failed or bool(findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
