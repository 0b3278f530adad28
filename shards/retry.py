"""Retries of object-storage calls: transient failures (HTTP 5xx, a reset connection, a timeout)
are retried with bounded exponential backoff and counted; permanent ones (no such object or
bucket, no permission, a 4xx answer) fail at once.

This is the one retry layer: the filesystems below it are opened with their own retries off
(`shards.location.STORAGE_OPTIONS`), so every retry is seen, counted and reported here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google")


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` calls in all; waits `base_s`, 2 x `base_s`, ... capped at `cap_s` between them."""

    attempts: int = 5
    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, retry: int) -> float:
        return min(self.base_s * 2**retry, self.cap_s)


DEFAULT_POLICY = RetryPolicy()


class RetryCounter:
    """Retries made, for stats and summaries."""

    def __init__(self):
        self.retries = 0


PROCESS_RETRIES = RetryCounter()  # every retry in this process, whoever asked for it


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind an error of aiohttp (`status`) or botocore (`response`), if any."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(error: BaseException) -> bool:
    """Worth another try: a 5xx answer, a dropped connection, a timeout, an I/O error of the store.
    The whole cause chain is read: backends wrap the HTTP error in an OSError of their own."""
    chain = []
    while error is not None and len(chain) < 16:
        chain.append(error)
        error = error.__cause__
    if any(isinstance(e, PERMANENT) for e in chain):
        return False
    status = next((s for s in map(http_status, chain) if s is not None), None)
    if status is not None:
        return status >= 500 or status in (408, 429)
    return any(
        isinstance(e, (TimeoutError, ConnectionError, OSError)) or type(e).__module__.split(".")[0] in TRANSIENT_MODULES
        for e in chain
    )


def retrying(call: Callable[[], T], what: str, policy: RetryPolicy = DEFAULT_POLICY) -> T:
    """`call()`, retried on transient errors; the last error propagates (permanent ones at once).
    Each retry counts in `PROCESS_RETRIES` and is reported on stderr, naming `what`."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt + 1 == policy.attempts:
                raise
            PROCESS_RETRIES.retries += 1
            print(f"retry {attempt + 1}/{policy.attempts - 1} of {what}: {error}", file=sys.stderr)
            time.sleep(policy.delay(attempt))
            attempt += 1
