#!/usr/bin/env python3
"""A minimal Lambda Runtime API, for measuring a function binary's init time locally.

Starts the binary (the `bootstrap` of a provided.al2023 function) with AWS_LAMBDA_RUNTIME_API
pointing here, and measures
  init  = process start -> its first GET /runtime/invocation/next (what Lambda bills as Init),
  first = that invocation handed out -> its response POSTed back.
Usage: runtime_emulator.py BINARY EVENT.json [RUNS=10]
Environment is passed through (set SLUICE_* and AWS_* as the function would see them).
"""
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def run_once(binary, event):
    state = {"next": None, "done": None, "response": None, "served": False}
    lock = threading.Condition()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if not self.path.endswith("/runtime/invocation/next"):
                self.send_error(404)
                return
            with lock:
                held = state["served"]
                if held:
                    # Second poll: the function is idle again; hold it until we stop it.
                    lock.wait(10)
                else:
                    state["next"] = time.perf_counter()
                    state["served"] = True
            if held:
                try:
                    self.send_error(503)
                except OSError:
                    pass  # the function was stopped while waiting; nothing to answer
                return
            body = json.dumps(event).encode()
            self.send_response(200)
            self.send_header("Lambda-Runtime-Aws-Request-Id", "8476a536-e9f4-11e8-9739-2dfe598c3fcd")
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
            self.send_header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:123456789012:function:sluice",
            )
            self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length)
            with lock:
                state["done"] = time.perf_counter()
                state["response"] = payload
                lock.notify_all()
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
        AWS_LAMBDA_FUNCTION_NAME="sluice",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
        AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/sluice",
        AWS_LAMBDA_LOG_STREAM_NAME="local",
    )
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with lock:
        lock.wait_for(lambda: state["done"] is not None, timeout=30)
    proc.kill()
    proc.wait()
    with lock:
        lock.notify_all()
    server.shutdown()
    if state["done"] is None:
        raise SystemExit(f"{binary}: no response within 30 s")
    return (state["next"] - start) * 1000, (state["done"] - state["next"]) * 1000, state["response"]


def main():
    binary, event_path = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    with open(event_path) as f:
        event = json.load(f)
    inits, firsts = [], []
    response = b""
    for _ in range(runs):
        init, first, response = run_once(binary, event)
        inits.append(init)
        firsts.append(first)
    print(
        f"{os.path.basename(binary)}: init median {statistics.median(inits):.1f} ms "
        f"(min {min(inits):.1f}, max {max(inits):.1f}), first invocation median "
        f"{statistics.median(firsts):.1f} ms over {runs} runs"
    )
    print(f"last response: {response[:200].decode(errors='replace')}")


if __name__ == "__main__":
    main()
