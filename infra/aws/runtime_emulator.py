#!/usr/bin/env python3
"""A minimal Lambda Runtime API, to run a function binary locally the way Lambda does.

Timing (the default): starts the binary (the `bootstrap` of a provided.al2023 function) with
AWS_LAMBDA_RUNTIME_API pointing here, and measures
  init  = process start -> its first GET /runtime/invocation/next (what Lambda bills as Init),
  first = that invocation handed out -> its response POSTed back.
Usage: runtime_emulator.py BINARY EVENT.json [RUNS=10]

Freezing: `runtime_emulator.py freeze BINARY EVENT.json [DEADLINE_S=28]` hands the binary one
invocation and, the moment its response has been received whole (buffered, or the end of a
streamed one), stops the process with SIGSTOP, as Lambda freezes an environment once the
response is sent: nothing the function left running after its response can run any more.
It then prints one JSON line on stdout, {"response": TEXT, "streamed": BOOL, "error": TEXT|null},
and reads commands from stdin, one per line: `term` resumes the process and sends SIGTERM (as
Lambda does when it shuts an environment down), waits for it to exit and prints
{"exit_code": N}; `kill` (or end of input) kills it. Later polls of /next are held
unanswered; the Extensions API answers registration and holds /event/next, so a function's
internal extension (lambda_runtime's graceful-shutdown hook) can register.

Environment is passed through (set SLUICE_* and AWS_* as the function would see them).
"""
import http.server
import json
import os
import signal
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


def lambda_env(port):
    return dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}",
        AWS_LAMBDA_FUNCTION_NAME="sluice",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
        AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/sluice",
        AWS_LAMBDA_LOG_STREAM_NAME="local",
    )


def read_body(handler):
    """The request body, whole: by Content-Length, or chunked (a streamed response)."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    body = bytearray()
    while True:
        size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            # Trailers (the streamed error headers, if any), then the blank line.
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += handler.rfile.read(size)
        handler.rfile.readline()


def freeze(binary, event, deadline_s):
    state = {"served": False, "proc": None, "done": threading.Event(), "stop": threading.Event()}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def hold(self):
            # An environment that is never invoked again: no answer until we stop.
            state["stop"].wait()

        def do_GET(self):
            if self.path.endswith("/extension/event/next"):
                self.hold()
                return
            if not self.path.endswith("/runtime/invocation/next") or state["served"]:
                self.hold()
                return
            state["served"] = True
            body = json.dumps(event).encode()
            self.send_response(200)
            self.send_header("Lambda-Runtime-Aws-Request-Id", "8476a536-e9f4-11e8-9739-2dfe598c3fcd")
            deadline_ms = int(time.time() * 1000) + int(deadline_s * 1000)
            self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline_ms))
            self.send_header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:123456789012:function:sluice",
            )
            self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if self.path.endswith("/extension/register"):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"functionName": "sluice", "functionVersion": "$LATEST", "handler": "bootstrap"}).encode()
                self.send_response(200)
                self.send_header("Lambda-Extension-Identifier", "sluice-extension-id")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            payload = read_body(self)
            if self.path.endswith("/response") or self.path.endswith("/error"):
                # The response is complete: freeze before anything else can run.
                if state["proc"] is not None:
                    os.kill(state["proc"].pid, signal.SIGSTOP)
                result = {
                    "response": payload.decode(errors="replace"),
                    "streamed": self.headers.get("Lambda-Runtime-Function-Response-Mode") == "streaming",
                    "error": payload.decode(errors="replace") if self.path.endswith("/error") else None,
                }
                print(json.dumps(result), flush=True)
                state["done"].set()
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen([binary], env=lambda_env(server.server_address[1]))
    state["proc"] = proc
    if not state["done"].wait(60):
        proc.kill()
        print(json.dumps({"response": None, "streamed": False, "error": "no response within 60 s"}), flush=True)
        return
    for line in sys.stdin:
        if line.strip() == "term":
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
            print(json.dumps({"exit_code": code}), flush=True)
            break
        if line.strip() == "kill":
            break
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    state["stop"].set()
    server.shutdown()


def main():
    if sys.argv[1] == "freeze":
        with open(sys.argv[3]) as f:
            event = json.load(f)
        deadline_s = float(sys.argv[4]) if len(sys.argv) > 4 else 28.0
        freeze(sys.argv[2], event, deadline_s)
        return
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
