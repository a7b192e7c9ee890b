#!/usr/bin/env python3
"""Measures a Lambda binary's init time: from process start to its first request for
an event (GET /2018-06-01/runtime/invocation/next on the runtime API), which is when
the Lambda service would hand it the first event. Median of N starts.

Usage: scripts/lambda-init-time.py BINARY [N=20]
e.g.   scripts/lambda-init-time.py target/release/publisher-lambda

The binary runs with the environment Lambda gives a function (runtime API, function
name, credentials, region) plus the settings tributary's functions need; nothing is
contacted but the stand-in runtime API on 127.0.0.1 (the clients and the database pool
are created without connecting).
"""

import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

NEXT = "/2018-06-01/runtime/invocation/next"


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    asked = threading.Event()

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path == NEXT:
            RuntimeApi.asked.set()
        # Hold the request: the measurement ends here; the process is killed.
        time.sleep(5)

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": os.path.basename(binary),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/measure",
        "AWS_LAMBDA_LOG_STREAM_NAME": "measure",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "measure",
        "AWS_SECRET_ACCESS_KEY": "measure",
        "PUBLISHER_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:profile-changes",
        "PUBLISHER_FAILURE_QUEUE_URL": "http://127.0.0.1:9/123456789012/failures",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:9/analytics",
        "SUBSCRIBER_DLQ_URL": "http://127.0.0.1:9/123456789012/dlq",
        "RUST_LOG": "warn",
    }
    samples = []
    for _ in range(runs):
        RuntimeApi.asked.clear()
        start = time.perf_counter()
        proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not RuntimeApi.asked.wait(10):
            proc.kill()
            print(f"{binary} never asked for an event", file=sys.stderr)
            return 1
        samples.append((time.perf_counter() - start) * 1000)
        proc.kill()
        proc.wait()
    print(f"{binary}: init (start -> first GET next) over {runs} starts: "
          f"median {statistics.median(samples):.1f} ms, min {min(samples):.1f} ms, "
          f"max {max(samples):.1f} ms")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
