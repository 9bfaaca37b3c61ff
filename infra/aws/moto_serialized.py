"""moto's server with DynamoDB requests handled one at a time.

moto's TransactWriteItems is not atomic across concurrent requests: it snapshots whole tables
and restores a snapshot when a transaction is cancelled, which can erase writes another
request made meanwhile (seen here: 16 of 40 concurrent conditional increments passed a limit
of 15). Real DynamoDB transactions are serializable. Serving one DynamoDB request at a time
(while still accepting connections concurrently) gives moto those semantics, so tests of
limits that must hold under concurrency test Sluice, not moto's races. Other services (SQS,
whose long polls sleep inside the handler) run concurrently as usual.

Usage: python moto_serialized.py PORT   (binds 127.0.0.1)
"""
import os
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    port = int(sys.argv[1])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    run_simple(
        "127.0.0.1",
        port,
        serialized,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
