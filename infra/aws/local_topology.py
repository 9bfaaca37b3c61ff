"""The SAM template's serverless topology, run locally on moto and `cargo lambda watch`.

Started by infra/aws/local.sh, which starts moto and turns template.yaml into CloudFormation
with samtranslator (infra/aws/sam_transform.py). From that CloudFormation this program:

1. Creates on moto the stateful resources exactly as the template defines them:
   `AWS::DynamoDB::Table` (keys, indexes, streams, SSE, TTL, point-in-time recovery),
   `AWS::SQS::Queue` (visibility timeout, retention, redrive policy to the dead-letter queue)
   and `AWS::SSM::Parameter`. Physical names are `<stack>-<LogicalId>`, as CloudFormation would
   name them (without its random suffix). A property it cannot map is an error, not a silent
   difference. Everything else (IAM, alarms, dashboards, API Gateway stages, permissions) has
   no local effect and is listed as such.
2. Resolves each `AWS::Lambda::Function`'s environment the way CloudFormation does: `Ref`,
   `Fn::GetAtt`, `Fn::Sub`, `Fn::Join` to the resources above, parameters, and dynamic
   references (`{{resolve:secretsmanager:...}}`, `{{resolve:ssm:...}}`) read from moto.
   The template's functions get only the secrets' ARNs (the secrets are created on moto for
   the run) and read the values themselves from moto's Secrets Manager at AWS_ENDPOINT_URL.
3. Runs every function under its own `cargo lambda watch` (the binary is the function's
   `Metadata.BuildProperties.Binary`), on its own port. One watch per function because the
   workspace's function binaries live in separate packages behind `default-members = ["cli"]`,
   where a watch without `-p` finds no function binary; and because two functions of the same
   binary (IngestFunction, IngestStreamFunction) need different environments.
4. Emulates the event sources:
   * HttpApi routes and function URLs: the watch's function-URL endpoint already speaks API
     Gateway payload 2.0 (and response streaming), so clients call it directly.
   * `AWS::Lambda::EventSourceMapping` on SQS: one poller per mapping long-polls the queue,
     gathers up to `BatchSize` messages for at most `MaximumBatchingWindowInSeconds` after the
     first one (or 6 MB), invokes the function synchronously with a real SQS event, and then,
     as Lambda does: with `ReportBatchItemFailures`, deletes every message except those listed
     in `batchItemFailures` (an empty or null list means all succeeded; an answer that is not
     JSON, or an unknown or empty `itemIdentifier`, fails the whole batch); without it,
     deletes all on success. A function
     error, a timeout (the function's `Timeout`) or a crash deletes nothing: the messages
     come back after the queue's visibility timeout, and moto moves a message to the
     dead-letter queue on the receive after `maxReceiveCount`.
   * `AWS::Events::Rule` with a `ScheduleExpression` (SAM `Schedule` events) and
     `AWS::Scheduler::Schedule` (`ScheduleV2`): the target is invoked every `rate(...)` with
     the target's `Input`, else EventBridge's scheduled-event payload (`cron(...)` is not
     emulated and is listed as such).
5. Supervises: when a function's process dies (e.g. `kill -9`) or an invocation times out,
   Lambda would start a fresh execution environment for the next invocation; cargo lambda
   watch 1.9 does not restart a killed function (its invocations would hang), so the function's
   watch is restarted, which also fails the invocation that was in flight.

Linux only (function processes are found under /proc). Logs: one file per function plus
events.jsonl (every batch, schedule tick and restart) in --log-dir. --state-file receives the
endpoints as JSON once everything is up.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3

ACCOUNT = "123456789012"  # moto's default account
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
NOT_EMULATED = {
    "AWS::IAM::Role": "IAM is not enforced locally",
    "AWS::IAM::Policy": "IAM is not enforced locally",
    "AWS::Lambda::Permission": "IAM is not enforced locally",
    "AWS::CloudWatch::Alarm": "no CloudWatch locally",
    "AWS::CloudWatch::Dashboard": "no CloudWatch locally",
    "AWS::ApiGatewayV2::Stage": "the function URL endpoint stands in for the API",
    "AWS::Logs::LogGroup": "logs go to files",
    "AWS::SNS::Topic": "no alarm actions locally",
}


class TopologyError(Exception):
    """Something in the template cannot be run locally as written."""


# What `Ref: AWS::NoValue` resolves to: the property or list item holding it is dropped.
NO_VALUE = object()


def log(message: str) -> None:
    print(f"[local] {message}", flush=True)


# ---------------------------------------------------------------------------- the template


class Template:
    """The CloudFormation template, its parameters, and the resources created from it."""

    def __init__(self, cfn: dict, params: dict, stack: str, region: str, aws: "Aws"):
        self.cfn = cfn
        self.resources: dict = cfn.get("Resources", {})
        self.stack = stack
        self.region = region
        self.aws = aws
        self.params = {}
        for name, spec in cfn.get("Parameters", {}).items():
            if name in params:
                self.params[name] = params[name]
            elif "Default" in spec:
                self.params[name] = str(spec["Default"])
        unknown = set(params) - set(cfn.get("Parameters", {}))
        if unknown:
            raise TopologyError(f"the template has no parameter {sorted(unknown)}")
        self.physical: dict[str, dict] = {}  # logical id -> {"ref": ..., attributes...}
        self.creating: set[str] = set()
        self.skipped: dict[str, str] = {}
        # Filled in by main() once the watches have ports (Fn::GetAtt Url.FunctionUrl).
        self.function_urls: dict[str, str] = {}

    def of_type(self, *types: str) -> dict[str, dict]:
        return {k: v for k, v in self.resources.items() if v.get("Type") in types}

    # -- intrinsic functions, as CloudFormation resolves them

    def resolve(self, value, where: str):
        """`value` with its intrinsic functions resolved; `Ref: AWS::NoValue` (as from an
        `Fn::If` branch) removes the property or list item that holds it."""
        if isinstance(value, list):
            items = (self.resolve(v, where) for v in value)
            return [v for v in items if v is not NO_VALUE]
        if isinstance(value, str):
            return self.dynamic_references(value)
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (fn, arg), = value.items()
            if fn == "Ref" and arg == "AWS::NoValue":
                return NO_VALUE
            if fn == "Ref":
                return self.ref(arg, where)
            if fn == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.condition(name, where) else no, where)
            if fn == "Fn::GetAtt":
                target, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(target, attr, where)
            if fn == "Fn::Sub":
                return self.sub(arg, where)
            if fn == "Fn::Join":
                sep, items = arg
                return self.dynamic_references(
                    sep.join(str(self.resolve(i, where)) for i in self.resolve(items, where))
                )
            if fn == "Fn::Select":
                index, items = arg
                return self.resolve(items, where)[int(self.resolve(index, where))]
            if fn.startswith("Fn::") or fn == "Condition":
                raise TopologyError(f"{where}: {fn} is not emulated locally")
        resolved = {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def condition(self, name: str, where: str) -> bool:
        """A named condition of the template's `Conditions`, as CloudFormation evaluates it."""
        conditions = self.cfn.get("Conditions", {})
        if name not in conditions:
            raise TopologyError(f"{where}: no condition named {name}")
        return self.truth(conditions[name], f"condition {name}")

    def truth(self, value, where: str) -> bool:
        if isinstance(value, dict) and len(value) == 1:
            (fn, arg), = value.items()
            if fn == "Condition":
                return self.condition(arg, where)
            if fn == "Fn::Equals":
                a, b = (self.resolve(x, where) for x in arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self.truth(arg[0], where)
            if fn == "Fn::And":
                return all(self.truth(x, where) for x in arg)
            if fn == "Fn::Or":
                return any(self.truth(x, where) for x in arg)
        raise TopologyError(f"{where}: {value!r} is not a condition that is emulated locally")

    def ref(self, name: str, where: str):
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.stack,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{ACCOUNT}:stack/{self.stack}/local",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.cfn.get("Parameters", {}):
            raise TopologyError(f"{where}: parameter {name} has no value; pass --param {name}=...")
        return self.create(name, where)["ref"]

    def get_att(self, name: str, attr: str, where: str):
        if self.resources.get(name, {}).get("Type") == "AWS::Lambda::Url" and attr == "FunctionUrl":
            return self.function_urls.get(name, f"http://127.0.0.1/{name}/")
        made = self.create(name, where)
        if attr not in made:
            raise TopologyError(f"{where}: Fn::GetAtt {name}.{attr} is not emulated locally")
        return made[attr]

    def sub(self, arg, where: str) -> str:
        text, names = (arg, {}) if isinstance(arg, str) else arg
        names = {k: self.resolve(v, where) for k, v in names.items()}

        def one(m: re.Match) -> str:
            expr = m.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in names:
                return str(names[expr])
            if "." in expr and expr.split(".", 1)[0] in self.resources:
                return str(self.get_att(*expr.split(".", 1), where))
            return str(self.ref(expr, where))

        return self.dynamic_references(re.sub(r"\$\{([^}]+)\}", one, text))

    def dynamic_references(self, text: str) -> str:
        """`{{resolve:secretsmanager:ID:SecretString[:json-key]}}` and `{{resolve:ssm:NAME}}`,
        read from moto, as CloudFormation reads them from the account at deploy time."""

        def one(m: re.Match) -> str:
            service, rest = m.group(1), m.group(2)
            if service == "ssm":
                name = rest.split(":")[0]
                return self.aws.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
            if service == "secretsmanager":
                # ARNs contain colons: the id is everything up to `:SecretString`.
                secret_id, _, tail = rest.partition(":SecretString")
                value = self.aws.client("secretsmanager").get_secret_value(SecretId=secret_id)[
                    "SecretString"
                ]
                key = tail.lstrip(":").split(":")[0]
                return str(json.loads(value)[key]) if key else value
            raise TopologyError(f"dynamic reference {m.group(0)} is not emulated locally")

        return re.sub(r"\{\{resolve:([a-z-]+):(.+?)\}\}", one, text)

    # -- resources

    def create(self, name: str, where: str) -> dict:
        """Creates a resource (and, first, what it refers to) once; returns its attributes."""
        if name in self.physical:
            return self.physical[name]
        resource = self.resources.get(name)
        if resource is None:
            raise TopologyError(f"{where}: no resource or parameter named {name}")
        if name in self.creating:
            raise TopologyError(f"{where}: circular reference through {name}")
        self.creating.add(name)
        kind = resource.get("Type")
        physical = f"{self.stack}-{name}"
        if kind in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SSM::Parameter"):
            props = self.resolve(resource.get("Properties", {}), name)
            if kind == "AWS::DynamoDB::Table":
                made = self.aws.create_table(props.pop("TableName", physical), props, name)
            elif kind == "AWS::SQS::Queue":
                made = self.aws.create_queue(props.pop("QueueName", physical), props, name)
            else:
                made = self.aws.put_parameter(props.pop("Name", physical), props, name)
        elif kind == "AWS::Lambda::Function":
            fn_name = resource.get("Properties", {}).get("FunctionName", physical)
            made = {
                "ref": fn_name,
                "Arn": f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{fn_name}",
            }
        else:
            # A reference to something with no local counterpart (a role, a topic): a
            # recognisable placeholder, never a real-looking value.
            made = {"ref": f"local-{physical}", "Arn": f"arn:aws:local:::{physical}"}
            self.skipped.setdefault(name, NOT_EMULATED.get(kind, f"{kind} is not emulated"))
        self.creating.discard(name)
        self.physical[name] = made
        return made


class Aws:
    """boto3 against moto, and the CloudFormation → API mapping of each resource type."""

    def __init__(self, region: str):
        self.region = region
        self.local = threading.local()

    def client(self, service: str):
        # boto3 clients are not shared across threads.
        clients = self.local.__dict__.setdefault("clients", {})
        if service not in clients:
            clients[service] = boto3.session.Session().client(service, region_name=self.region)
        return clients[service]

    def create_table(self, table: str, p: dict, logical: str) -> dict:
        ddb = self.client("dynamodb")
        take = Props(p, logical)
        args = {"TableName": table}
        for key in ("AttributeDefinitions", "KeySchema", "BillingMode", "ProvisionedThroughput",
                    "LocalSecondaryIndexes", "TableClass", "DeletionProtectionEnabled", "Tags"):
            if key in p:
                args[key] = take(key)
        if "GlobalSecondaryIndexes" in p:
            args["GlobalSecondaryIndexes"] = [
                {k: v for k, v in gsi.items() if k != "ContributorInsightsSpecification"}
                for gsi in take("GlobalSecondaryIndexes")
            ]
        if "StreamSpecification" in p:
            args["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": take("StreamSpecification")["StreamViewType"],
            }
        if "SSESpecification" in p:
            sse = take("SSESpecification")
            args["SSESpecification"] = {"Enabled": bool(sse.get("SSEEnabled"))}
            for k in ("SSEType", "KMSMasterKeyId"):
                if k in sse:
                    args["SSESpecification"][k] = sse[k]
        ttl = take("TimeToLiveSpecification", None)
        pitr = take("PointInTimeRecoverySpecification", None)
        take("ContributorInsightsSpecification", None)  # CloudWatch: nothing local
        take.done()
        desc = ddb.create_table(**args)["TableDescription"]
        if ttl and ttl.get("Enabled"):
            ddb.update_time_to_live(TableName=table, TimeToLiveSpecification=ttl)
        if pitr:
            ddb.update_continuous_backups(
                TableName=table,
                PointInTimeRecoverySpecification={
                    "PointInTimeRecoveryEnabled": bool(pitr.get("PointInTimeRecoveryEnabled"))
                },
            )
        keys = ", ".join(f"{k['AttributeName']} {k['KeyType']}" for k in args["KeySchema"])
        extras = [f"key {keys}"]
        if ttl and ttl.get("Enabled"):
            extras.append(f"TTL {ttl['AttributeName']}")
        for gsi in args.get("GlobalSecondaryIndexes", []):
            extras.append(f"GSI {gsi['IndexName']}")
        made = {"ref": table, "Arn": desc["TableArn"], "summary": "; ".join(extras)}
        if "LatestStreamArn" in desc:
            made["StreamArn"] = desc["LatestStreamArn"]
        return made

    def create_queue(self, name: str, p: dict, logical: str) -> dict:
        sqs = self.client("sqs")
        take = Props(p, logical)
        attributes = {}
        for key in ("DelaySeconds", "MaximumMessageSize", "MessageRetentionPeriod",
                    "ReceiveMessageWaitTimeSeconds", "VisibilityTimeout", "FifoQueue",
                    "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit",
                    "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds", "SqsManagedSseEnabled"):
            if key in p:
                value = take(key)
                attributes[key] = str(value).lower() if isinstance(value, bool) else str(value)
        for key in ("RedrivePolicy", "RedriveAllowPolicy"):
            if key in p:
                value = take(key)
                attributes[key] = value if isinstance(value, str) else json.dumps(value)
        tags = {t["Key"]: t["Value"] for t in take("Tags", [])}
        take.done()
        url = sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        summary = [f"visibility {attrs.get('VisibilityTimeout')} s"]
        if "RedrivePolicy" in attrs:
            redrive = json.loads(attrs["RedrivePolicy"])
            summary.append(
                f"to {redrive['deadLetterTargetArn'].rsplit(':', 1)[1]} after "
                f"{redrive['maxReceiveCount']} receives"
            )
        return {
            "ref": url,
            "Arn": attrs["QueueArn"],
            "QueueName": name,
            "QueueUrl": url,
            "VisibilityTimeout": int(attrs.get("VisibilityTimeout", 30)),
            "summary": "; ".join(summary),
        }

    def put_parameter(self, name: str, p: dict, logical: str) -> dict:
        take = Props(p, logical)
        args = {"Name": name, "Type": take("Type"), "Value": take("Value"), "Overwrite": True}
        for key in ("Description", "Tier", "DataType", "AllowedPattern"):
            if key in p:
                args[key] = take(key)
        take("Tags", None)
        take.done()
        self.client("ssm").put_parameter(**args)
        return {"ref": name, "Type": args["Type"], "Value": args["Value"], "summary": args["Type"]}


class Props:
    """Takes properties one by one; `done()` fails on any that nothing took, so a property
    added to the template that the local topology cannot honour is noticed."""

    def __init__(self, props: dict, logical: str):
        self.props = dict(props)
        self.logical = logical

    def __call__(self, key: str, default=KeyError):
        if key in self.props:
            return self.props.pop(key)
        if default is KeyError:
            raise TopologyError(f"{self.logical}: {key} is required")
        return default

    def done(self) -> None:
        if self.props:
            raise TopologyError(
                f"{self.logical}: properties {sorted(self.props)} are not emulated locally"
            )


# ---------------------------------------------------------------------------- functions


@dataclass
class Function:
    logical: str
    binary: str
    package: str
    timeout_s: int
    env: dict
    port: int = 0
    triggers: list = field(default_factory=list)
    watch: "Watch | None" = None
    url_auth: str | None = None  # the function URL's AuthType, if it has one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lambda-url/{self.binary}/"

    @property
    def invoke_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/2015-03-31/functions/{self.binary}/invocations"


def cargo_packages(root: Path) -> dict[str, str]:
    """Binary name -> package name, for every binary in the workspace."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    return {
        t["name"]: p["name"]
        for p in json.loads(out)["packages"]
        for t in p["targets"]
        if "bin" in t["kind"]
    }


def layer_dirs(t: Template, layers: list) -> list[Path]:
    """The local directories of a function's layers (`Ref`s to `AWS::Lambda::LayerVersion`
    whose content sam_transform.py left at `s3://local/<dir>`)."""
    dirs = []
    for layer in layers:
        name = layer.get("Ref") if isinstance(layer, dict) else None
        content = t.resources.get(name, {}).get("Properties", {}).get("Content", {})
        if content.get("S3Bucket") != "local" or not content.get("S3Key"):
            raise TopologyError(f"layer {layer!r}: only local layer directories are emulated")
        dirs.append(Path(__file__).resolve().parents[2] / content["S3Key"])
    return dirs


def plan_functions(t: Template, packages: dict[str, str], local_env: dict) -> dict[str, Function]:
    functions = {}
    for logical, res in t.of_type("AWS::Lambda::Function").items():
        binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        if not binary or binary not in packages:
            raise TopologyError(f"{logical}: Metadata.BuildProperties.Binary names no workspace binary")
        props = res.get("Properties", {})
        env = t.resolve(props.get("Environment", {}).get("Variables", {}), logical)
        env = {k: str(v) for k, v in env.items()}
        # Lambda mounts a function's layers at /opt; here a layer is its local directory
        # (sam_transform.py keeps it as `s3://local/<dir>`), so /opt paths point there.
        for layer in layer_dirs(t, props.get("Layers", [])):
            env = {k: (str(layer / v[len("/opt/"):]) if v.startswith("/opt/") else v)
                   for k, v in env.items()}
        env.update(local_env)
        functions[logical] = Function(
            logical, binary, packages[binary], int(props.get("Timeout", 3)), env
        )
    return functions


def function_of(t: Template, value, functions: dict[str, Function]) -> Function:
    """The function an ARN, a name or a `Ref`/`Fn::GetAtt` names."""
    if isinstance(value, dict):
        (fn, arg), = value.items()
        name = arg if fn == "Ref" else (arg[0] if isinstance(arg, list) else arg.split(".")[0])
        if name in functions:
            return functions[name]
    for f in functions.values():
        physical = t.physical.get(f.logical, {})
        if value in (physical.get("ref"), physical.get("Arn")):
            return f
    raise TopologyError(f"{value!r} names no function of the template")


def http_triggers(t: Template, functions: dict[str, Function]) -> None:
    """HttpApi integrations (from the OpenAPI body SAM generates) and function URLs."""
    for logical, api in t.of_type("AWS::ApiGatewayV2::Api").items():
        for path, methods in api.get("Properties", {}).get("Body", {}).get("paths", {}).items():
            for method, op in methods.items():
                integration = op.get("x-amazon-apigateway-integration", {})
                uri = json.dumps(integration.get("uri", ""))
                target = next((f for f in functions if f"${{{f}.Arn}}" in uri), None)
                if target is None:
                    continue
                version = integration.get("payloadFormatVersion", "1.0")
                if version != "2.0":
                    raise TopologyError(
                        f"{logical} {path}: payload format {version} is not emulated "
                        "(cargo lambda watch sends API Gateway payload 2.0)"
                    )
                verb = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
                functions[target].triggers.append(f"{logical} {verb} {path} (HTTP API, payload 2.0)")
    for logical, url in t.of_type("AWS::Lambda::Url").items():
        props = url.get("Properties", {})
        f = function_of(t, props.get("TargetFunctionArn"), functions)
        auth = props.get("AuthType", "NONE")
        # cargo lambda watch does not check SigV4: an AWS_IAM URL is open locally.
        auth_note = ", AWS_IAM: not enforced locally" if auth == "AWS_IAM" else ""
        f.triggers.append(
            f"{logical} (function URL, {props.get('InvokeMode', 'BUFFERED')}{auth_note})")
        f.url_auth = auth
        t.function_urls[logical] = f.url


# ---------------------------------------------------------------------------- watches


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


class Watch:
    """One `cargo lambda watch` serving one function on its own port, restartable."""

    def __init__(self, fn: Function, root: Path, log_dir: Path, quiet: bool, reload: bool,
                 events: "Events"):
        self.fn = fn
        self.root = root
        self.reload = reload
        self.log_path = log_dir / f"{fn.logical}.log"
        self.quiet = quiet
        self.events = events
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.had_function = False
        self.gone_since: float | None = None
        self.restarts = 0
        self.last_start = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.fn.env)
        cmd = ["cargo", "lambda", "watch", "--package", self.fn.package,
               "--invoke-address", "127.0.0.1", "--invoke-port", str(self.fn.port)]
        if not self.reload:
            cmd.append("--ignore-changes")
        # Its own session: stopping it never signals this program.
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.had_function = False
        self.gone_since = None
        self.last_start = time.monotonic()
        threading.Thread(target=self.copy_output, args=(self.proc,), daemon=True).start()

    def copy_output(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if not self.quiet:
                    sys.stdout.write(f"[{self.fn.logical}] {line.decode(errors='replace')}")
                    sys.stdout.flush()

    def function_pids(self) -> list[int]:
        """The function's processes (watch execs `cargo run`, which execs the binary)."""
        proc = self.proc
        if proc is None:
            return []
        return [p for p in children(proc.pid) if exe_name(p) == self.fn.binary]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.fn.port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return True
            proc = self.proc
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # The function runs in its own process group (watchexec's): remember it by pid.
        left = children(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)  # watch stops its function on SIGTERM
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart(self, reason: str) -> None:
        with self.lock:
            # One death reported twice (the supervisor, a failed invocation): restart once.
            if time.monotonic() - self.last_start < 2:
                return
            self.restarts += 1
            self.events.emit("environment_reset", function=self.fn.logical, reason=reason)
            self.stop()
            self.start()
        if not self.wait_ready(30):
            raise TopologyError(
                f"{self.fn.logical}: cargo lambda watch did not come back; see {self.log_path}")

    def check(self) -> None:
        """A function process that ran and is gone (killed, crashed) means a new execution
        environment for the next invocation, as on Lambda. After a code change the watch
        rebuilds (a `cargo` child) and restarts the function itself: any child is alive."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            self.restart(f"cargo lambda watch exited ({proc.returncode})")
            return
        alive = children(proc.pid)
        if any(exe_name(p) == self.fn.binary for p in alive):
            self.had_function = True
        if alive or not self.had_function:
            self.gone_since = None
            return
        now = time.monotonic()
        if self.gone_since is None:
            self.gone_since = now
        elif now - self.gone_since > 1.0:
            self.restart("the function process died")


# ---------------------------------------------------------------------------- invocations


class Events:
    """events.jsonl: what the emulators did, for people and for the end-to-end test."""

    def __init__(self, path: Path, quiet: bool):
        self.path = path
        self.quiet = quiet
        self.lock = threading.Lock()

    def emit(self, event: str, **fields) -> None:
        record = {"t": round(time.time(), 3), "event": event, **fields}
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if not self.quiet or event == "environment_reset":
            brief = {k: v for k, v in fields.items() if k not in ("message_ids", "bodies")}
            log(f"{event} {json.dumps(brief)}")


class InvokeError(Exception):
    """The invocation failed as a whole: function error, timeout, or a dead environment."""


def invoke(fn: Function, payload: dict, timeout_s: float) -> dict | None:
    if fn.watch is not None and not fn.watch.wait_ready(30):
        raise InvokeError("the function's watch is not listening")
    request = urllib.request.Request(
        fn.invoke_url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as e:  # the function returned an error (watch: 500)
        raise InvokeError(f"function error {e.code}: {e.read()[:300]!r}") from None
    except TimeoutError:
        if fn.watch is not None:
            fn.watch.restart(f"invocation timed out after {timeout_s:.0f} s")
        raise InvokeError(f"timed out after {timeout_s:.0f} s") from None
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        raise InvokeError(f"the execution environment went away: {e}") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return NOT_JSON


NOT_JSON = object()  # a function's answer that is not JSON


def failed_ids(response, message_ids: list[str]) -> set[str] | None:
    """The messages to leave on the queue per a `ReportBatchItemFailures` response; None when
    the response fails the whole batch (not JSON, or an itemIdentifier that is empty, null,
    under another key or unknown). No answer, or no failures listed, is full success."""
    if response is NOT_JSON:
        return None
    if not isinstance(response, dict):
        return set()
    failures = response.get("batchItemFailures")
    if not failures:
        return set()
    ids = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not item or item not in message_ids:
            return None
        ids.add(item)
    return ids


def sqs_record(message: dict, queue_arn: str, region: str) -> dict:
    """One record of Lambda's SQS event, from a ReceiveMessage message."""
    attributes = {}
    for name, a in message.get("MessageAttributes", {}).items():
        attributes[name] = {
            "stringValue": a.get("StringValue"),
            "binaryValue": base64.b64encode(a["BinaryValue"]).decode() if "BinaryValue" in a else None,
            "stringListValues": a.get("StringListValues", []),
            "binaryListValues": [base64.b64encode(b).decode() for b in a.get("BinaryListValues", [])],
            "dataType": a["DataType"],
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsMapping:
    """An `AWS::Lambda::EventSourceMapping` on an SQS queue: poll, batch, invoke, delete."""

    def __init__(self, logical: str, fn: Function, queue: dict, props: dict, aws: Aws,
                 events: Events, stop: threading.Event):
        take = Props(props, logical)
        take("EventSourceArn")
        take("FunctionName")
        self.batch_size = int(take("BatchSize", 10))
        self.window_s = float(take("MaximumBatchingWindowInSeconds", 0))
        self.report_failures = "ReportBatchItemFailures" in take("FunctionResponseTypes", [])
        self.enabled = take("Enabled", True) not in (False, "false")
        # One poller and one environment per function locally, which any MaximumConcurrency
        # (2 or more) allows.
        self.max_concurrency = take("ScalingConfig", {}).get("MaximumConcurrency")
        take.done()  # FilterCriteria, ProvisionedPollerConfig, ...: not emulated, so refused
        self.logical, self.fn, self.queue, self.aws = logical, fn, queue, aws
        self.events, self.stop = events, stop
        fn.triggers.append(
            f"{logical}: SQS {queue['QueueName']} (batch {self.batch_size}, window "
            f"{self.window_s:g} s{', ReportBatchItemFailures' if self.report_failures else ''}"
            f"{f', max concurrency {self.max_concurrency}' if self.max_concurrency else ''})"
        )

    def gather(self) -> list[dict]:
        """Up to BatchSize messages: the first by long polling, then more until the batching
        window (counted from the first) closes, the batch is full, or 6 MB is near."""
        sqs = self.aws.client("sqs")
        batch: list[dict] = []
        size = 0
        deadline = None
        while not self.stop.is_set() and len(batch) < self.batch_size:
            if deadline is None:
                wait = 20
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = max(1, round(left)) if left >= 0.5 else 0
            got = sqs.receive_message(
                QueueUrl=self.queue["QueueUrl"],
                MaxNumberOfMessages=min(10, self.batch_size - len(batch)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            batch.extend(got)
            size += sum(len(m.get("Body", "").encode()) for m in got)
            if got and deadline is None:
                deadline = time.monotonic() + self.window_s
            if batch and (self.window_s == 0 or size > MAX_PAYLOAD_BYTES - 10 * 262_144):
                break
        return batch

    def run(self) -> None:
        if not self.enabled:
            return
        while not self.stop.is_set():
            try:
                batch = self.gather()
                if batch:
                    self.deliver(batch)
            except Exception as e:  # moto going away at shutdown, mostly
                if not self.stop.is_set():
                    self.events.emit("poll_error", mapping=self.logical, error=str(e))
                    time.sleep(1)

    def deliver(self, batch: list[dict]) -> None:
        ids = [m["MessageId"] for m in batch]
        event = {"Records": [sqs_record(m, self.queue["Arn"], self.aws.region) for m in batch]}
        receives = [int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)) for m in batch]
        self.events.emit("invoke", mapping=self.logical, function=self.fn.logical,
                         records=len(batch), message_ids=ids, receive_counts=receives,
                         bodies=[m.get("Body", "")[:100] for m in batch])
        started = time.monotonic()
        try:
            response = invoke(self.fn, event, self.fn.timeout_s + 1)
        except InvokeError as e:
            self.events.emit("invoke_failed", mapping=self.logical, function=self.fn.logical,
                             records=len(batch), message_ids=ids, error=str(e),
                             note="nothing deleted: back after the visibility timeout")
            return
        keep = failed_ids(response, ids) if self.report_failures else set()
        if keep is None:
            keep = set(ids)
        done = [m for m in batch if m["MessageId"] not in keep]
        sqs = self.aws.client("sqs")
        for i in range(0, len(done), 10):
            sqs.delete_message_batch(
                QueueUrl=self.queue["QueueUrl"],
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                         for n, m in enumerate(done[i:i + 10])],
            )
        self.events.emit("invoked", mapping=self.logical, function=self.fn.logical,
                         records=len(batch), deleted=len(done), left_for_retry=sorted(keep),
                         ms=round((time.monotonic() - started) * 1000))


# ---------------------------------------------------------------------------- schedules


def rate_seconds(expression: str) -> int | None:
    m = re.fullmatch(r"rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not m:
        return None
    unit = {"minute": 60, "hour": 3600, "day": 86400}[m.group(2).rstrip("s")]
    return int(m.group(1)) * unit


def scheduled_event(rule_arn: str, region: str, now: dt.datetime) -> dict:
    """EventBridge's payload for a scheduled rule (no Input on the target)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class Schedule:
    """A scheduled invocation every `rate(...)`, the first one rate after the start, as
    EventBridge does for a new rule."""

    def __init__(self, logical: str, expression: str, fn: Function, payload, arn: str,
                 events: Events, stop: threading.Event, region: str):
        self.logical, self.expression, self.fn = logical, expression, fn
        self.payload, self.arn, self.events, self.stop, self.region = payload, arn, events, stop, region
        self.every = rate_seconds(expression)
        fn.triggers.append(f"{logical}: schedule {expression}")

    def run(self) -> None:
        next_at = time.monotonic() + self.every
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.every
            now = dt.datetime.now(dt.timezone.utc)
            payload = self.payload if self.payload is not None else scheduled_event(
                self.arn, self.region, now)
            try:
                response = invoke(self.fn, payload, self.fn.timeout_s + 1)
                self.events.emit("scheduled", schedule=self.logical, function=self.fn.logical,
                                 response=response)
            except InvokeError as e:
                # Asynchronous on Lambda (retried twice); here the next tick is the retry.
                self.events.emit("scheduled_failed", schedule=self.logical,
                                 function=self.fn.logical, error=str(e))


def plan_schedules(t: Template, functions, events, stop) -> list[Schedule]:
    """SAM `Schedule` events (an `AWS::Events::Rule` with a ScheduleExpression) and
    `ScheduleV2` events (`AWS::Scheduler::Schedule`). Only `rate(...)` expressions run; a
    `cron(...)` one is listed as not emulated."""
    found = []  # (logical, expression, target, payload, arn)
    for logical, rule in t.of_type("AWS::Events::Rule").items():
        props = rule.get("Properties", {})
        if "ScheduleExpression" not in props:
            t.skipped[logical] = "event-pattern rules are not emulated"
            continue
        if props.get("State", "ENABLED") != "ENABLED":
            continue
        arn = f"arn:aws:events:{t.region}:{ACCOUNT}:rule/{t.stack}-{logical}"
        for target in props.get("Targets", []):
            if "InputPath" in target or "InputTransformer" in target:
                raise TopologyError(f"{logical}: InputPath/InputTransformer are not emulated")
            # Without Input, EventBridge sends its scheduled-event payload (None here).
            payload = json.loads(t.resolve(target["Input"], logical)) if "Input" in target else None
            found.append((logical, props["ScheduleExpression"], target["Arn"], payload, arn))
    for logical, sched in t.of_type("AWS::Scheduler::Schedule").items():
        props = sched.get("Properties", {})
        if props.get("State", "ENABLED") != "ENABLED":
            continue
        target = props["Target"]
        # EventBridge Scheduler sends the target's Input as it is.
        payload = json.loads(t.resolve(target["Input"], logical)) if "Input" in target else {}
        arn = f"arn:aws:scheduler:{t.region}:{ACCOUNT}:schedule/default/{t.stack}-{logical}"
        found.append((logical, props["ScheduleExpression"], target["Arn"], payload, arn))
    schedules = []
    for logical, expression, target, payload, arn in found:
        if rate_seconds(expression) is None:
            t.skipped[logical] = f"schedule {expression} is not emulated (only rate(...))"
            continue
        fn = function_of(t, target, functions)
        schedules.append(Schedule(logical, expression, fn, payload, arn, events, stop, t.region))
    return schedules


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_pairs(pairs: list[str], what: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{what} must be KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def build(functions: dict[str, Function], root: Path) -> None:
    """What each watch will `cargo run`, built now (same flags, so the same artifacts), so a
    first invocation does not wait for the compiler."""
    for package, binary in sorted({(f.package, f.binary) for f in functions.values()}):
        log(f"cargo build --package {package} --bin {binary}")
        subprocess.run(["cargo", "build", "--quiet", "--package", package, "--bin", binary],
                       cwd=root, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--template", required=True, help="CloudFormation JSON (sam_transform.py)")
    ap.add_argument("--root", default=".", help="the cargo workspace")
    ap.add_argument("--stack", default="sluice-local", help="stack name: prefix of physical names")
    ap.add_argument("--port", type=int, default=9000,
                    help="first function's port, the next ones follow (0: free ports)")
    ap.add_argument("--param", action="append", default=[], help="template parameter KEY=VALUE")
    ap.add_argument("--env", action="append", default=[],
                    help="environment variable for every function, KEY=VALUE (after the template's)")
    ap.add_argument("--config", help="Sluice config file, given to every function as SLUICE_CONFIG "
                    "(instead of the template's config layer)")
    ap.add_argument("--admin-key", help="the admin key (default: random, printed)")
    ap.add_argument("--provider-keys", default="{}",
                    help="JSON object of provider keys for the providers secret")
    ap.add_argument("--visibility-timeout", type=int,
                    help="override every queue's VisibilityTimeout (seconds), e.g. for tests")
    ap.add_argument("--function-timeout", type=int,
                    help="cap every function's Timeout (and SLUICE_FUNCTION_TIMEOUT_S, which "
                    "repeats it) at this many seconds, e.g. for tests with a short visibility "
                    "timeout: the functions check at start-up that their timeouts agree")
    ap.add_argument("--log-dir", default=None, help="function logs and events.jsonl")
    ap.add_argument("--state-file", help="write endpoints as JSON here once ready")
    ap.add_argument("--quiet", action="store_true", help="function logs to files only")
    ap.add_argument("--no-build", action="store_true", help="skip the cargo build before starting")
    ap.add_argument("--no-reload", action="store_true",
                    help="do not rebuild and restart functions when the code changes (tests)")
    args = ap.parse_args()

    def interrupted(signum, _frame):
        # Once: a second signal (Ctrl-C twice, the shell forwarding one) must not cut the
        # cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(128 + signum)  # unwinds through main's finally: watches stop

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    root = Path(args.root).resolve()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    log_dir = Path(args.log_dir or root / "target" / "local-topology").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    events = Events(log_dir / "events.jsonl", args.quiet)
    events.path.write_text("")
    aws = Aws(region)
    with open(args.template, encoding="utf-8") as f:
        cfn = json.load(f)
    if args.visibility_timeout is not None:
        for res in cfn.get("Resources", {}).values():
            if res.get("Type") == "AWS::SQS::Queue":
                res.setdefault("Properties", {})["VisibilityTimeout"] = args.visibility_timeout
    if args.function_timeout is not None:
        for res in cfn.get("Resources", {}).values():
            if res.get("Type") == "AWS::Lambda::Function":
                props = res.setdefault("Properties", {})
                props["Timeout"] = min(int(props.get("Timeout", 3)), args.function_timeout)
                env = props.get("Environment", {}).get("Variables", {})
                if "SLUICE_FUNCTION_TIMEOUT_S" in env:
                    env["SLUICE_FUNCTION_TIMEOUT_S"] = str(props["Timeout"])

    # The two secrets whose ARNs the template hands the functions, made on moto for this run.
    params = parse_pairs(args.param, "--param")
    admin_key = args.admin_key or "sk-sluice-admin-local-" + secrets.token_hex(12)
    local_secrets = {"ProviderSecretArn": ("providers", args.provider_keys),
                     "AdminKeySecretArn": ("admin", admin_key)}
    for param, (name, value) in local_secrets.items():
        if param in cfn.get("Parameters", {}) and param not in params:
            params[param] = aws.client("secretsmanager").create_secret(
                Name=f"{args.stack}/{name}", SecretString=value)["ARN"]
    t = Template(cfn, params, args.stack, region, aws)

    for logical, res in t.resources.items():
        if res.get("Type") in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SSM::Parameter"):
            t.create(logical, logical)
    local_env = {k: os.environ[k] for k in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    local_env.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
    if args.config:
        local_env["SLUICE_CONFIG"] = str(Path(args.config).resolve())
    elif json.loads(args.provider_keys or "{}") == {}:
        # The template's config layer names real providers whose keys come from the secret;
        # with none given, an empty SLUICE_CONFIG means the built-in mock models (offline).
        local_env["SLUICE_CONFIG"] = ""
        print("local: no --config and no --provider-keys: every function uses the built-in "
              "mock models instead of the config layer", file=sys.stderr)
    local_env.update(parse_pairs(args.env, "--env"))
    functions = plan_functions(t, cargo_packages(root), local_env)
    # The functions read secrets by ARN: no secret value may be in a function's configuration.
    secret_values = [admin_key] + [v for v in json.loads(args.provider_keys or "{}").values()
                                   if isinstance(v, str) and v]
    for fn in functions.values():
        leaked = [k for k, v in fn.env.items() if any(sv in v for sv in secret_values)]
        if leaked:
            raise TopologyError(f"{fn.logical}: {', '.join(leaked)} hold a secret value; "
                                "the template must pass the secret's ARN instead")
    for i, fn in enumerate(functions.values()):
        fn.port = free_port() if args.port == 0 else args.port + i
    for logical in functions:
        t.create(logical, logical)
    http_triggers(t, functions)
    stop = threading.Event()
    mappings = []
    for logical, res in t.of_type("AWS::Lambda::EventSourceMapping").items():
        props = res.get("Properties", {})
        fn = function_of(t, props.get("FunctionName"), functions)
        source = json.dumps(props.get("EventSourceArn"))
        queue = next((t.physical[q] for q in t.of_type("AWS::SQS::Queue") if f'"{q}"' in source), None)
        if queue is None:
            raise TopologyError(f"{logical}: only SQS event sources are emulated")
        if "ScalingConfig" in props:  # e.g. MaximumConcurrency from a parameter
            props = {**props, "ScalingConfig": t.resolve(props["ScalingConfig"], logical)}
        mappings.append(SqsMapping(logical, fn, queue, props, aws, events, stop))
    schedules = plan_schedules(t, functions, events, stop)
    emulated = {"AWS::Lambda::EventSourceMapping", "AWS::Lambda::Url", "AWS::ApiGatewayV2::Api",
                "AWS::Events::Rule", "AWS::Scheduler::Schedule"}
    for logical, res in t.resources.items():
        kind = res.get("Type")
        if logical not in t.physical and logical not in t.skipped and kind not in emulated:
            t.skipped[logical] = NOT_EMULATED.get(kind, "not emulated")

    if not args.no_build:
        build(functions, root)
    try:
        return serve(args, t, functions, mappings, schedules, admin_key, log_dir, events, stop)
    finally:
        stop.set()
        for fn in functions.values():
            if fn.watch is not None:
                fn.watch.stop()


def serve(args, t: Template, functions: dict[str, Function], mappings, schedules,
          admin_key: str, log_dir: Path, events: Events, stop: threading.Event) -> int:
    for fn in functions.values():
        fn.watch = Watch(fn, Path(args.root).resolve(), log_dir, args.quiet, not args.no_reload,
                         events)
        fn.watch.start()
    for fn in functions.values():
        if not fn.watch.wait_ready(120):
            raise TopologyError(f"{fn.logical}: cargo lambda watch is not listening; see {fn.watch.log_path}")
    for runner in [*mappings, *schedules]:
        threading.Thread(target=runner.run, daemon=True).start()

    # -- what is running where
    print(f"\nSluice local topology: stack {args.stack} on moto at {os.environ.get('AWS_ENDPOINT_URL')}")
    for logical, made in t.physical.items():
        kind = t.resources[logical]["Type"]
        if kind in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SSM::Parameter"):
            print(f"  {logical:26} {kind:22} {made['ref'].rsplit('/', 1)[-1]}  ({made['summary']})")
    for fn in functions.values():
        print(f"  {fn.logical:26} {fn.binary:22} watch on :{fn.port}, timeout {fn.timeout_s} s")
        for trigger in fn.triggers:
            print(f"      <- {trigger}")
        if any("HTTP" in x or "function URL" in x for x in fn.triggers):
            print(f"      {fn.url}v1   (OpenAI base_url)")
    skipped = sorted({f"{t.resources[k]['Type']} ({why})" for k, why in t.skipped.items()})
    if skipped:
        print("  no local effect: " + "; ".join(skipped))
    print(f"  admin key: {admin_key}\n  logs: {log_dir}\n", flush=True)

    state = {
        "stack": args.stack,
        "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
        "admin_key": admin_key,
        "log_dir": str(log_dir),
        "events": str(events.path),
        "resources": {k: {kk: vv for kk, vv in v.items() if kk != "summary"}
                      for k, v in t.physical.items()},
        "functions": {
            f.logical: {"binary": f.binary, "port": f.port, "url": f.url,
                        "invoke_url": f.invoke_url, "watch_pid": f.watch.proc.pid,
                        "triggers": f.triggers, "timeout_s": f.timeout_s,
                        "url_auth": f.url_auth,
                        "secret_arns": {k: v for k, v in f.env.items()
                                        if k.startswith("SLUICE_") and k.endswith("_SECRET_ARN")}}
            for f in functions.values()
        },
        "mappings": {m.logical: {"function": m.fn.logical, "queue": m.queue["QueueName"],
                                 "batch_size": m.batch_size, "window_s": m.window_s,
                                 "report_batch_item_failures": m.report_failures,
                                 "max_concurrency": m.max_concurrency}
                     for m in mappings},
        "schedules": {s.logical: {"function": s.fn.logical, "expression": s.expression}
                      for s in schedules},
    }

    def write_state() -> None:
        if args.state_file:
            tmp = Path(args.state_file + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(args.state_file)

    write_state()
    while not stop.wait(0.25):
        for fn in functions.values():
            fn.watch.check()
            pid = fn.watch.proc.pid if fn.watch.proc else None
            if pid is not None and state["functions"][fn.logical]["watch_pid"] != pid:
                state["functions"][fn.logical]["watch_pid"] = pid
                write_state()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TopologyError as e:
        print(f"local topology: {e}", file=sys.stderr)
        sys.exit(2)
