"""A real S3-compatible server for the tests, and a proxy in front of it that fails requests.

`S3Server` runs moto's standalone server (`moto[server]`, a test extra) as a separate process on
127.0.0.1. `FaultyProxy` relays HTTP to it and, by a seeded draw per request, answers 503 or
cuts the connection halfway through the answer (a reset mid-transfer; a connection dropped before
any answer would be resent by the HTTP client itself, unseen); requests whose path contains a `poisoned` string fail
every time (HTTP 500). An outage window (`outage`) fails every request for some seconds, by dropped
connections or 503s, from the n-th request for a given path on; `delete_bucket` deletes a bucket
on the server when the n-th request for a path arrives (mid-run, at a known point). It counts what
it did, so tests can compare with what the client counted.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def s3_environment(port: int) -> dict[str, str]:
    """The standard AWS_* variables that point s3:// URLs at a server on `port`."""
    return CREDENTIALS | {"AWS_ENDPOINT_URL": endpoint(port)}


class S3Server:
    """moto's S3 server in a child process; `endpoint` is what AWS_ENDPOINT_URL should say. With
    `check_credentials`, it refuses keys it has not issued (as a real store does); by default it
    takes any."""

    def __init__(self, check_credentials: bool = False, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = endpoint(self.port)
        environment = os.environ | ({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environment,
        )
        deadline = time.monotonic() + 60
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not start on port {self.port}")
            time.sleep(0.1)

    @property
    def environment(self) -> dict[str, str]:
        return s3_environment(self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class FaultyProxy:
    """Relays to `target_port`; fails `fail_fraction` of requests (half 503, half cut short), and all
    requests whose path contains one of `poisoned` with HTTP 500; waits `latency_s` before each answer."""

    def __init__(
        self,
        target_port: int,
        fail_fraction: float = 0.0,
        seed: int = 0,
        poisoned: tuple[str, ...] = (),
        latency_s: float = 0.0,
    ):
        self.target_port, self.fail_fraction, self.poisoned = target_port, fail_fraction, poisoned
        self.latency_s = latency_s  # added before each answer: a remote store's time to first byte
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"relayed": 0, "503": 0, "cut": 0, "poisoned": 0, "outage": 0}
        self._outage: dict | None = None  # {"countdown", "match", "seconds", "kind", "until"}
        self._deletion: dict | None = None  # {"countdown", "match", "bucket"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def outage(self, seconds: float, after: int = 1, match: str = ".tar", kind: str = "reset") -> None:
        """Fail every request for `seconds`, starting at the `after`-th request whose path contains
        `match` from now on: `kind` "reset" drops each connection without an answer, "503" answers
        503 (an unreachable store, a throttling one)."""
        with self.lock:
            self._outage = {"countdown": after, "match": match, "seconds": seconds, "kind": kind, "until": None}

    def end_outage(self) -> None:
        with self.lock:
            self._outage = None

    def delete_bucket(self, bucket: str, after: int = 1, match: str = ".tar") -> None:
        """Delete `bucket` (its objects, then itself) on the server when the `after`-th request
        whose path contains `match` arrives, before that request is relayed."""
        with self.lock:
            self._deletion = {"countdown": after, "match": match, "bucket": bucket}

    def _in_outage(self, path: str) -> str | None:
        """The outage's kind if this request falls in it (call with the lock held)."""
        outage = self._outage
        if outage is None:
            return None
        if outage["until"] is None and outage["match"] in path:
            outage["countdown"] -= 1
            if outage["countdown"] <= 0:
                outage["until"] = time.monotonic() + outage["seconds"]
        return outage["kind"] if outage["until"] is not None and time.monotonic() < outage["until"] else None

    def _bucket_to_delete(self, path: str) -> str | None:
        with self.lock:
            deletion = self._deletion
            if deletion is None or deletion["match"] not in path:
                return None
            deletion["countdown"] -= 1
            if deletion["countdown"] > 0:
                return None
            self._deletion = None
            return deletion["bucket"]

    def _delete(self, bucket: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(
            skip_instance_cache=True, client_kwargs={"endpoint_url": f"http://127.0.0.1:{self.target_port}"}
        )
        fs.rm(bucket, recursive=True)
        if fs.exists(bucket):
            fs.rmdir(bucket)

    def _fate(self, method: str, path: str) -> str:
        """What happens to this request (a HEAD answer has no body to cut short: it gets 503)."""
        with self.lock:
            outage = self._in_outage(path)
            if outage is not None:
                fate = "outage-" + outage
                self.counts["outage"] += 1
                return fate
            if any(p in path for p in self.poisoned):
                fate = "poisoned"
            elif self.random.random() < self.fail_fraction:
                fate = self.random.choice(("503", "cut")) if method != "HEAD" else "503"
            else:
                fate = "relayed"
            self.counts[fate] += 1
            return fate

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                body = self._body()
                fate = proxy._fate(self.command, self.path)
                bucket = proxy._bucket_to_delete(self.path)
                if bucket is not None:
                    proxy._delete(bucket)
                time.sleep(proxy.latency_s)
                if fate == "outage-reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fate in ("503", "poisoned", "outage-503"):
                    status = 500 if fate == "poisoned" else 503
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                        self.send_header(name, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))  # a HEAD tells the object's size
                self.end_headers()
                upstream.close()
                if fate == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        return Handler
