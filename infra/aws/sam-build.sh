#!/usr/bin/env bash
# `sam build` exactly as the README's Deploy section runs it (template.yaml, BuildMethod
# rust-cargolambda, arm64, offline), then each function's size against the 5 MB target and a
# lint of the built template. Installs what is missing: the aarch64-unknown-linux-gnu Rust target
# (rustup), cargo-lambda (PyPI, its own venv .venv-lambda; it brings Zig and must come first on
# PATH, or SAM says "Zig is not installed") and the SAM CLI (infra/aws/sam-venv.sh).
# Usage: infra/aws/sam-build.sh        (output in .aws-sam/build; prints the time and the sizes)
# Fails when the build fails, a function's zip is over SLUICE_LAMBDA_ZIP_LIMIT bytes (5000000),
# the config layer lacks the config file, or the built template does not lint clean.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=${SLUICE_LAMBDA_ZIP_LIMIT:-5000000}

if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu
fi
SAM_VENV=$(infra/aws/sam-venv.sh)
LAMBDA_VENV=${SLUICE_LAMBDA_VENV:-.venv-lambda}
if [ ! -x "$LAMBDA_VENV/bin/cargo-lambda" ]; then
    python3 -m venv "$LAMBDA_VENV"
    "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check cargo-lambda
fi
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
export PATH="$(abs "$LAMBDA_VENV")/bin:$(abs "$SAM_VENV")/bin:$PATH"
export SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
echo "$(sam --version), $(cargo lambda --version), $(rustc --version)"

# First the four functions in one cargo invocation, with the arguments Cargo.toml's
# [workspace.metadata.lambda] gives each of SAM's builds: the dependencies once and two links
# at a time on two cores (about a quarter less than SAM's three builds in a row, cold). `sam
# build` then runs its own `cargo lambda build --bin <name>` per function exactly as for a user,
# finds them fresh, and copies them; a mismatch would only make it rebuild.
started=$(date +%s)
cargo lambda build --release --arm64 -p sluice-ingest -p sluice-processor -p sluice-aggregator \
    -p sluice-housekeeper --bin ingest --bin processor --bin aggregator --bin housekeeper
built=$(date +%s)
sam build --template template.yaml
secs=$(( $(date +%s) - built ))
prebuild=$(( built - started ))

# Sizes as `sam package` zips each artifact directory (zipfile, ZIP_DEFLATED); the config layer
# must hold the file the functions are told to read (parameter ConfigFile's default).
"$SAM_VENV/bin/python" - "$LIMIT" "$prebuild" "$secs" <<'PY'
import io, os, sys, zipfile, yaml

limit, prebuild, secs = (int(a) for a in sys.argv[1:])
build = ".aws-sam/build"

class Loader(yaml.SafeLoader):
    pass
Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !Ref, !Sub, ...
template = yaml.load(open(os.path.join(build, "template.yaml")), Loader=Loader)
resources = template["Resources"]

def zipped(directory):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for root, _, files in os.walk(directory):
            for f in sorted(files):
                path = os.path.join(root, f)
                z.write(path, os.path.relpath(path, directory))
    return len(buf.getvalue())

mb = lambda n: f"{n / 1e6:.2f} MB"
print(f"cargo lambda build (4 function binaries): {prebuild} s, then sam build: {secs} s")
print(f"{'function':<22} {'bootstrap':>20} {'zip':>20}   (limit {limit:,} B)")
over = []
for name, r in resources.items():
    if r["Type"] != "AWS::Serverless::Function":
        continue
    code = os.path.join(build, r["Properties"]["CodeUri"])
    size, z = os.path.getsize(os.path.join(code, "bootstrap")), zipped(code)
    print(f"{name:<22} {size:>11,} B {mb(size):>8} {z:>11,} B {mb(z):>8}")
    if z > limit:
        over.append(name)

layer = resources["SluiceConfigLayer"]["Properties"]["ContentUri"]
config = template["Parameters"]["ConfigFile"]["Default"]
path = os.path.normpath(os.path.join(build, layer, config))
if not os.path.isfile(path):
    sys.exit(f"the config layer ({layer}) has no {config}: {path}")
print(f"config layer: {os.path.relpath(path)} -> /opt/{config}")
if over:
    sys.exit(f"over the {limit:,} B zip limit: {', '.join(over)}")
PY

echo "== lint of the built template"
infra/aws/lint-template.sh .aws-sam/build/template.yaml
