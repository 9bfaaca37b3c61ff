"""Unit tests of the local topology's emulators (infra/aws/local_topology.py): how a
`ReportBatchItemFailures` answer is read, the SQS event records, schedules. The planning test
runs samtranslator (the SAM venv) on a template with Schedule and ScheduleV2 events, the kind
the template does not have yet. Run: .venv/bin/pytest -q infra/aws/test_local_topology.py
"""
import datetime as dt
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
