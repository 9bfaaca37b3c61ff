"""Unit tests of the local topology's emulators (infra/aws/local_topology.py): how a
`ReportBatchItemFailures` answer is read, the SQS event records, schedules, conditions; and
checks of template.yaml as SAM translates it (the protected edge, logs and alarms). The planning test
runs samtranslator (the SAM venv) on a template with Schedule and ScheduleV2 events, the kind
the template does not have yet. Run: .venv/bin/pytest -q infra/aws/test_local_topology.py
"""
import datetime as dt
import fnmatch
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import local_topology as lt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_an_empty_or_null_failure_list_is_a_full_success():
    ids = ["a", "b"]
    for response in (None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}):
        assert lt.failed_ids(response, ids) == set()


def test_listed_failures_stay_on_the_queue():
    assert lt.failed_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ["a", "b"]) == {"b"}


def test_an_empty_null_misnamed_or_unknown_identifier_fails_the_whole_batch():
    ids = ["a", "b"]
    for item in ({"itemIdentifier": ""}, {"itemIdentifier": None}, {"itemIdentifier": "zz"},
                 {"itemId": "a"}, "a"):
        assert lt.failed_ids({"batchItemFailures": [item]}, ids) is None
    assert lt.failed_ids(lt.NOT_JSON, ids) is None


def test_sqs_record_has_lambdas_shape():
    message = {
        "MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}", "MD5OfBody": "x",
        "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1"},
        "MessageAttributes": {"k": {"DataType": "Binary", "BinaryValue": b"\x01"}},
    }
    record = lt.sqs_record(message, "arn:aws:sqs:us-east-1:123456789012:q", "us-east-1")
    assert record["messageId"] == "m1" and record["eventSource"] == "aws:sqs"
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert record["messageAttributes"]["k"]["binaryValue"] == "AQ=="
    assert record["eventSourceARN"].endswith(":q") and record["awsRegion"] == "us-east-1"


def test_rates():
    assert lt.rate_seconds("rate(1 minute)") == 60
    assert lt.rate_seconds("rate(5 minutes)") == 300
    assert lt.rate_seconds("rate(2 hours)") == 7200
    assert lt.rate_seconds("cron(0 12 * * ? *)") is None


def test_scheduled_event_is_eventbridges():
    now = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.timezone.utc)
    event = lt.scheduled_event("arn:aws:events:us-east-1:123456789012:rule/r", "us-east-1", now)
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["time"] == "2026-12-06T10:00:00Z" and event["detail"] == {}


SCHEDULED = """
Transform: AWS::Serverless-2016-10-31
Resources:
  Housekeeping:
    Type: AWS::Serverless::Function
    Metadata: {BuildMethod: rust-cargolambda, BuildProperties: {Binary: processor}}
    Properties:
      CodeUri: functions/processor
      Handler: bootstrap
      Runtime: provided.al2023
      Events:
        Tick: {Type: Schedule, Properties: {Schedule: rate(5 minutes)}}
        WithInput: {Type: Schedule, Properties: {Schedule: rate(1 hour), Input: '{"task": "sweep"}'}}
        Nightly: {Type: ScheduleV2, Properties: {ScheduleExpression: 'cron(0 3 * * ? *)'}}
"""


def sam_python():
    venv = Path(os.environ.get("SLUICE_SAM_VENV", ROOT / ".venv-sam"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip("no SAM venv (infra/aws/sam-venv.sh)")
    return python


def test_schedule_events_become_rate_invocations(tmp_path):
    (tmp_path / "template.yaml").write_text(SCHEDULED)
    cfn = json.loads(subprocess.run(
        [sam_python(), ROOT / "infra/aws/sam_transform.py", tmp_path / "template.yaml"],
        check=True, capture_output=True, text=True).stdout)
    t = lt.Template(cfn, {}, "test", "us-east-1", aws=None)
    functions = lt.plan_functions(t, {"processor": "sluice-processor"}, {})
    schedules = lt.plan_schedules(t, functions, events=None, stop=threading.Event())
    by_name = {s.logical: s for s in schedules}
    assert {s.fn.logical for s in schedules} == {"Housekeeping"}
    assert sorted(s.every for s in schedules) == [300, 3600]
    with_input = next(s for s in schedules if s.every == 3600)
    assert with_input.payload == {"task": "sweep"}
    assert next(s for s in schedules if s.every == 300).payload is None  # EventBridge's event
    assert any("cron(0 3 * * ? *)" in why for why in t.skipped.values()), t.skipped
    assert len(by_name) == 2


def test_conditions_if_and_no_value_resolve_as_cloudformation_does():
    cfn = {
        "Parameters": {"Topic": {"Type": "String", "Default": ""},
                       "Mode": {"Type": "String", "Default": "a"}},
        "Conditions": {"HasTopic": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Topic"}, ""]}]},
                       "ModeA": {"Fn::Equals": [{"Ref": "Mode"}, "a"]},
                       "Both": {"Fn::And": [{"Condition": "HasTopic"}, {"Condition": "ModeA"}]},
                       "Either": {"Fn::Or": [{"Condition": "HasTopic"}, {"Condition": "ModeA"}]}},
        "Resources": {},
    }
    value = {"Actions": {"Fn::If": ["HasTopic", [{"Ref": "Topic"}], {"Ref": "AWS::NoValue"}]},
             "List": ["x", {"Fn::If": ["Both", "y", {"Ref": "AWS::NoValue"}]}],
             "Pick": {"Fn::If": ["Either", "yes", "no"]}}
    t = lt.Template(cfn, {}, "s", "us-east-1", aws=None)
    assert t.resolve(value, "v") == {"List": ["x"], "Pick": "yes"}
    t = lt.Template(cfn, {"Topic": "arn:aws:sns:us-east-1:123456789012:pager", "Mode": "b"},
                    "s", "us-east-1", aws=None)
    assert t.resolve(value, "v") == {"Actions": ["arn:aws:sns:us-east-1:123456789012:pager"],
                                     "List": ["x"], "Pick": "yes"}
    with pytest.raises(lt.TopologyError, match="no condition named Nope"):
        t.resolve({"Fn::If": ["Nope", 1, 2]}, "v")
    with pytest.raises(lt.TopologyError, match="not emulated"):
        t.resolve({"Fn::FindInMap": ["m", "k", "v"]}, "v")


# ---------------------------------------------------------------- the template itself
# (issue 16, items 3 and 4): what SAM hands CloudFormation, checked resource by resource.


@pytest.fixture(scope="module")
def cfn():
    return json.loads(subprocess.run(
        [sam_python(), ROOT / "infra/aws/sam_transform.py", ROOT / "template.yaml"],
        check=True, capture_output=True, text=True).stdout)


def of_type(cfn, kind):
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == kind}


PUBLIC = ("IngestFunction", "IngestStreamFunction")


def test_the_edge_is_throttled_and_capped(cfn):
    t = lt.Template(cfn, {}, "s", "us-east-1", aws=None)
    (stage,) = of_type(cfn, "AWS::ApiGatewayV2::Stage").values()
    throttles = t.resolve(stage["Properties"]["DefaultRouteSettings"], "stage")
    assert throttles == {"ThrottlingRateLimit": "50", "ThrottlingBurstLimit": "100"}
    functions = of_type(cfn, "AWS::Lambda::Function")
    assert t.resolve(functions["IngestFunction"]["Properties"]["ReservedConcurrentExecutions"],
                     "f") == "100"
    assert t.resolve(
        functions["IngestStreamFunction"]["Properties"]["ReservedConcurrentExecutions"], "f") == "20"
    jobs = cfn["Resources"]["ProcessorFunctionJobs"]["Properties"]
    assert t.resolve(jobs["ScalingConfig"], "m") == {"MaximumConcurrency": "10"}
    usage = cfn["Resources"]["AggregatorFunctionUsage"]["Properties"]
    assert usage["ScalingConfig"] == {"MaximumConcurrency": 2}


def test_the_admin_api_is_only_behind_iam(cfn):
    functions = of_type(cfn, "AWS::Lambda::Function")
    for name in PUBLIC:
        env = functions[name]["Properties"]["Environment"]["Variables"]
        assert env["SLUICE_ROUTES"] == "public", name
        assert "SLUICE_ADMIN_KEY" not in env, f"{name} needs no admin key"
        assert "SLUICE_ADMIN_KEY_SECRET_ARN" not in env, f"{name} needs no admin key"
    admin = functions["AdminFunction"]["Properties"]
    assert admin["Environment"]["Variables"]["SLUICE_ROUTES"] == "admin"
    assert "SLUICE_ADMIN_KEY_SECRET_ARN" in admin["Environment"]["Variables"]
    urls = {u["Properties"]["TargetFunctionArn"]["Ref"]: u["Properties"]
            for u in of_type(cfn, "AWS::Lambda::Url").values()}
    assert urls["AdminFunction"]["AuthType"] == "AWS_IAM"
    assert urls["IngestStreamFunction"]["AuthType"] == "NONE"
    # Nothing lets anyone invoke the admin function but through IAM.
    for p in of_type(cfn, "AWS::Lambda::Permission").values():
        assert p["Properties"]["FunctionName"] != {"Ref": "AdminFunction"}, p
    api = next(iter(of_type(cfn, "AWS::ApiGatewayV2::Api").values()))
    assert "AdminFunction" not in json.dumps(api), "the HTTP API integrates no admin function"


def test_no_role_may_scan(cfn):
    # Issue 16: no request, admin or housekeeping path scans a table (the admin key list
    # queries KeysTable's index keys-by-creation). An action pattern that would allow Scan
    # (`dynamodb:*`, `dynamodb:Sc*`, `*`) counts as allowing it.
    scanners = set()
    for name, role in of_type(cfn, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if st.get("Effect") == "Allow" and any(
                    fnmatch.fnmatchcase("dynamodb:Scan", a) for a in actions
                ):
                    scanners.add(name)
    assert scanners == set()
    keys = of_type(cfn, "AWS::DynamoDB::Table")["KeysTable"]["Properties"]
    assert [i["IndexName"] for i in keys["GlobalSecondaryIndexes"]] == ["keys-by-creation"]
    functions = of_type(cfn, "AWS::Lambda::Function")
    assert functions["AdminFunction"]["Properties"]["Role"] == {"Fn::GetAtt": ["AdminRole", "Arn"]}


def test_only_the_admin_role_may_write_keys(cfn):
    # The public functions authenticate (GetItem) and nothing more: a compromised ingest
    # environment cannot mint, change or revoke gateway keys.
    readers = set()
    for name, role in of_type(cfn, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                if not any("KeysTable" in json.dumps(r) for r in resources):
                    continue
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if name == "AdminRole":
                    continue
                readers.add(name)
                assert actions == ["dynamodb:GetItem"], (name, actions)
    assert readers == {"IngestRole", "ProcessorRole"}


def test_every_function_logs_json_to_its_own_group_with_retention_and_may_trace(cfn):
    functions = of_type(cfn, "AWS::Lambda::Function")
    groups = of_type(cfn, "AWS::Logs::LogGroup")
    used = set()
    for name, f in functions.items():
        logging = f["Properties"]["LoggingConfig"]
        assert logging["LogFormat"] == "JSON", name
        group = logging["LogGroup"]["Ref"]
        assert group in groups and group not in used, name
        used.add(group)
        assert groups[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert f["Properties"]["TracingConfig"] == {"Mode": {"Ref": "XRayTracing"}}, name
    assert len(functions) == 6 and used == set(groups)
    xray = {"Fn::If": ["TracingActive", {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/"
                                         "AWSXRayDaemonWriteAccess"}, {"Ref": "AWS::NoValue"}]}
    roles = {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()}
    for role in roles:
        assert xray in cfn["Resources"][role]["Properties"]["ManagedPolicyArns"], role
    for tracing, policies in (("Active", 2), ("PassThrough", 1)):
        t = lt.Template(cfn, {"XRayTracing": tracing}, "s", "us-east-1", aws=None)
        arns = t.resolve(cfn["Resources"]["AdminRole"]["Properties"]["ManagedPolicyArns"], "r")
        assert len(arns) == policies, arns


def test_every_alarm_notifies_the_alarm_topic_when_one_is_given(cfn):
    alarms = of_type(cfn, "AWS::CloudWatch::Alarm")
    topic = "arn:aws:sns:us-east-1:123456789012:pager"
    paged = lt.Template(cfn, {"AlarmTopic": topic}, "s", "us-east-1", aws=None)
    quiet = lt.Template(cfn, {}, "s", "us-east-1", aws=None)
    for name, alarm in alarms.items():
        actions = {k: alarm["Properties"][k] for k in ("AlarmActions", "OKActions")}
        assert paged.resolve(actions, name) == {"AlarmActions": [topic], "OKActions": [topic]}
        assert quiet.resolve(actions, name) == {}, name


def metrics_of(alarm):
    """(namespace, metric name, dimensions) of every metric an alarm reads."""
    p = alarm["Properties"]
    if "MetricName" in p:
        return [(p["Namespace"], p["MetricName"], p.get("Dimensions", []))]
    return [(m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"],
             m["MetricStat"]["Metric"].get("Dimensions", []))
            for m in p["Metrics"] if "MetricStat" in m]


def test_alarms_cover_functions_queues_tables_and_5xx(cfn):
    watched = {(ns, name, json.dumps(dims, sort_keys=True))
               for alarm in of_type(cfn, "AWS::CloudWatch::Alarm").values()
               for ns, name, dims in metrics_of(alarm)}

    def has(ns, name, dim, value):
        return (ns, name, json.dumps([{"Name": dim, "Value": value}], sort_keys=True)) in watched

    for f in of_type(cfn, "AWS::Lambda::Function"):
        for metric in ("Errors", "Throttles"):
            assert has("AWS/Lambda", metric, "FunctionName", {"Ref": f}), (f, metric)
    for q in ("JobsQueue", "UsageQueue"):
        assert has("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName",
                   {"Fn::GetAtt": [q, "QueueName"]}), q
    for q in ("JobsDeadLetterQueue", "UsageDeadLetterQueue"):
        assert has("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                   {"Fn::GetAtt": [q, "QueueName"]}), q
    for table in of_type(cfn, "AWS::DynamoDB::Table"):
        for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
            assert has("AWS/DynamoDB", metric, "TableName", {"Ref": table}), (table, metric)
    assert has("AWS/ApiGateway", "5xx", "ApiId", {"Ref": "HttpApi"})
    assert has("AWS/Lambda", "Url5xxCount", "FunctionName", {"Ref": "IngestStreamFunction"})


def test_error_rate_alarms_count_server_errors_not_clients(cfn):
    alarms = of_type(cfn, "AWS::CloudWatch::Alarm")
    sluice = [n for ns, n, _ in metrics_of(alarms["ErrorRateAlarm"])]
    assert sorted(sluice) == ["Requests", "ServerErrors"]
    assert sorted(n for _, n, _ in metrics_of(alarms["Api5xxAlarm"])) == ["5xx", "Count"]
    read = {(ns, n) for a in alarms.values() for ns, n, _ in metrics_of(a)}
    # Sluice's Errors counts 4xx and 429 too; no alarm reads a client-error count.
    for client_side in (("Sluice", "Errors"), ("AWS/ApiGateway", "4xx"),
                        ("AWS/Lambda", "Url4xxCount")):
        assert client_side not in read, client_side


def test_secrets_reach_functions_by_arn_and_each_role_reads_only_its_own(cfn):
    functions = of_type(cfn, "AWS::Lambda::Function")
    roles = of_type(cfn, "AWS::IAM::Role")
    wanted = {"IngestFunction": {"ProviderSecretArn"}, "IngestStreamFunction": {"ProviderSecretArn"},
              "ProcessorFunction": {"ProviderSecretArn"}, "AdminFunction": {"AdminKeySecretArn"},
              "AggregatorFunction": set(), "HousekeeperFunction": set()}
    assert set(functions) == set(wanted)
    for name, params in wanted.items():
        props = functions[name]["Properties"]
        env = props.get("Environment", {}).get("Variables", {})
        # Only references to the parameters: never a resolved value or a dynamic reference.
        assert "{{resolve:" not in json.dumps(env), name
        in_env = {v["Ref"] for k, v in env.items() if k.endswith("_SECRET_ARN")}
        assert in_env == params, (name, in_env)
        role = roles[props["Role"]["Fn::GetAtt"][0]]
        readable = set()
        for policy in role["Properties"].get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if any(a.startswith("secretsmanager:") for a in actions):
                    assert actions == ["secretsmanager:GetSecretValue"], (name, actions)
                    text = json.dumps(st["Resource"])
                    readable |= {p for p in ("ProviderSecretArn", "AdminKeySecretArn") if p in text}
                    assert "*" not in text.replace("-??????", ""), (name, text)
        assert readable == params, (name, readable)
