"""The SAM template as CloudFormation: what `sam deploy` would hand to CloudFormation.

Runs samtranslator (the library inside the SAM CLI, so in the SAM venv: infra/aws/sam-venv.sh)
on template.yaml and prints the CloudFormation JSON. Every `AWS::Serverless::*` resource
becomes what SAM deploys: functions become `AWS::Lambda::Function` (with their `Metadata`,
e.g. `BuildProperties.Binary`), SQS events `AWS::Lambda::EventSourceMapping`, Schedule events
`AWS::Events::Rule` / `AWS::Scheduler::Schedule`, `FunctionUrlConfig` an `AWS::Lambda::Url`,
HttpApi events an `AWS::ApiGatewayV2::Api` whose OpenAPI body names the integrated function.
infra/aws/local_topology.py builds the local topology from this output.

Usage: python sam_transform.py template.yaml > template.cfn.json
samtranslator accepts only S3 code locations (as after `sam package`); local `CodeUri`s and
layer `ContentUri`s are rewritten to `s3://local/<path>` first: the local topology reads a
layer's directory from that key (it stands in for /opt).
"""
import json
import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template names no managed policies by name, so no IAM lookup is needed."""

    def load(self):
        return {}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        template = yaml_parse(f.read())
    functions = [
        r.get("Properties", {})
        for r in template.get("Resources", {}).values()
        if r.get("Type") == "AWS::Serverless::Function"
    ]
    functions.append(template.get("Globals", {}).get("Function", {}))
    for props in functions:
        code = props.get("CodeUri")
        if isinstance(code, str) and not code.startswith("s3://"):
            props["CodeUri"] = "s3://local/" + code
    # Layers likewise: the local topology mounts `s3://local/<dir>` where Lambda mounts /opt.
    for r in template.get("Resources", {}).values():
        props = r.get("Properties", {})
        content = props.get("ContentUri")
        if r.get("Type") == "AWS::Serverless::LayerVersion" and isinstance(content, str) \
                and not content.startswith("s3://"):
            props["ContentUri"] = "s3://local/" + content
    # Pseudo parameters (AWS::Region) are looked up from the environment at transform time.
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    cfn = transform(template, {}, NoManagedPolicies(), passthrough_metadata=True)
    json.dump(cfn, sys.stdout, indent=1)  # template order: ports follow it
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
