#!/usr/bin/env python3
"""Checks that the timeouts in the SAM template agree (docs/aws.md, "Timeouts"):

- a function that states SLUICE_FUNCTION_TIMEOUT_S states its own `Timeout` (the function
  checks its config against that value at start-up);
- the buffered ingest function (SLUICE_LAMBDA_RESPONSE=buffered, behind API Gateway) has a
  timeout of at most 29 s, API Gateway's integration limit;
- every queue that drives a function through an SQS event has a visibility timeout of at least
  6 x that function's timeout (AWS's guidance for SQS event sources).

Run with a Python that has cfn-lint (it reads CloudFormation's short tags):
  .venv-sam/bin/python infra/aws/check-timeouts.py [template.yaml]
Prints one line per check; exits 1 if any fails.
"""
import sys

from cfnlint.decode import cfn_yaml

API_GATEWAY_LIMIT_S = 29


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    template = cfn_yaml.load(path)
    resources = template["Resources"]
    default_timeout = template.get("Globals", {}).get("Function", {}).get("Timeout", 3)
    failures = []

    def check(ok, line):
        print(("ok    " if ok else "FAIL  ") + line)
        if not ok:
            failures.append(line)

    for name, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        timeout = int(props.get("Timeout", default_timeout))
        env = props.get("Environment", {}).get("Variables", {})
        stated = env.get("SLUICE_FUNCTION_TIMEOUT_S")
        if stated is not None:
            check(int(stated) == timeout,
                  f"{name}: SLUICE_FUNCTION_TIMEOUT_S {stated} = Timeout {timeout}")
        if env.get("SLUICE_LAMBDA_RESPONSE") == "buffered":
            check(timeout <= API_GATEWAY_LIMIT_S,
                  f"{name}: Timeout {timeout} s <= API Gateway's {API_GATEWAY_LIMIT_S} s")
        for event_name, event in props.get("Events", {}).items():
            if event.get("Type") != "SQS":
                continue
            queue_ref = event["Properties"]["Queue"]
            queue_name = queue_ref["Fn::GetAtt"][0] if isinstance(queue_ref, dict) else None
            queue = resources.get(queue_name, {}).get("Properties", {})
            visibility = int(queue.get("VisibilityTimeout", 30))
            check(visibility >= 6 * timeout,
                  f"{name}.{event_name}: {queue_name} VisibilityTimeout {visibility} s >= "
                  f"6 x Timeout {timeout} s")
    if failures:
        print(f"{len(failures)} timeout check(s) failed in {path}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
