"""Retries of object-storage calls, and the one reading of an exception's chain of causes.

Transient failures (HTTP 5xx, 408, 429, a reset connection, a timeout) are retried with
exponential backoff, capped, for as long as a time budget allows (`RetryPolicy.timeout_s`,
`--storage-timeout`): a store that throttles or blips for seconds, even minutes, costs time and
nothing else. Permanent ones (no such object or bucket, no permission, a 4xx answer, a full or
failing local disk) fail at once. A store still failing when the budget is spent is a
`StorageFailure` naming the URL: it stops the job; it is never turned into missing data.

This is the one retry loop (`retry_each`, and `retrying` for one call): the filesystems below it
are opened with their own retries off (`shards.location.STORAGE_OPTIONS`), so every retry is
seen, counted and reported here.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0  # --storage-timeout: how long a store may stay unreachable
MAX_BACKOFF_S = 20.0
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google")
# a local disk's failures: the same call fails again (an object store's answers carry an HTTP status)
LOCAL_FAILURES = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class StorageFailure(OSError):
    """The store cannot serve a call: it stayed unreachable for the whole time budget, or refused
    (no such bucket or object, no permission). A job stops on it (exit 2), naming the URL."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry for up to `timeout_s` seconds after a call first fails, waiting `base_s`, 2 x `base_s`,
    ... between tries, each wait capped at `cap_s` (default: a tenth of the budget, at most
    MAX_BACKOFF_S); `attempts`, if given, also caps the calls made."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    base_s: float = 0.05
    cap_s: float | None = None
    attempts: int | None = None

    def __post_init__(self):
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 (or None: the time budget alone), got {self.attempts}")
        if self.timeout_s < 0 or self.base_s < 0:
            raise ValueError(f"timeout_s ({self.timeout_s}) and base_s ({self.base_s}) must be >= 0")

    def delay(self, retry: int) -> float:
        cap = self.cap_s if self.cap_s is not None else min(MAX_BACKOFF_S, self.timeout_s / 10)
        return min(self.base_s * 2**retry, cap)


_default = [RetryPolicy()]


def default_policy() -> RetryPolicy:
    """The policy of every call that names none: `RetryPolicy()` until `set_storage_timeout`."""
    return _default[0]


def set_storage_timeout(seconds: float) -> None:
    """This process's time budget for storage calls (a job's `--storage-timeout`; a Ray task sets
    the one its job was given)."""
    _default[0] = RetryPolicy(timeout_s=seconds)


class RetryCounter:
    """Retries made, for stats and summaries; counted from reader threads too, hence the lock."""

    def __init__(self):
        self.retries = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.retries = self.retries + count


PROCESS_RETRIES = RetryCounter()  # every retry in this process, whoever asked for it


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what it was raised from or while handling (`raise ... from None` ends the
    chain), outermost first: backends wrap the store's answer in an error of their own, and
    torch.save reports a failed write as a RuntimeError raised while handling the OSError."""
    seen = 0
    while error is not None and seen < 32:
        yield error
        seen += 1
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind an error, the outermost one in its chain: aiohttp's `status`,
    botocore's `response` (a backend wraps them in an OSError of its own)."""
    for cause in causes(error):
        status = getattr(cause, "status", None)
        if isinstance(status, int):
            return status
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and response.get("ResponseMetadata", {}).get("HTTPStatusCode"):
            return response["ResponseMetadata"]["HTTPStatusCode"]
    return None


def is_transient(error: BaseException) -> bool:
    """Worth another try: a 5xx, 408 or 429 answer, a dropped connection, a timeout. Not: a refusal,
    a 4xx answer, a local disk that is full or failing, a budget already spent."""
    chain = list(causes(error))
    if any(isinstance(e, (*PERMANENT, StorageFailure)) for e in chain):
        return False
    status = http_status(error)
    if status is not None:
        return status >= 500 or status in (408, 429)
    network = any(
        isinstance(e, (TimeoutError, ConnectionError)) or type(e).__module__.split(".")[0] in TRANSIENT_MODULES
        for e in chain
    )
    if not network and any(isinstance(e, OSError) and e.errno in LOCAL_FAILURES for e in chain):
        return False
    return network or any(isinstance(e, OSError) for e in chain)


def retry_each(
    attempt: Callable[[list[int]], list[T | Exception]],
    count: int,
    what: Callable[[list[int]], str],
    policy: RetryPolicy | None = None,
    counter: RetryCounter | None = None,
) -> list[T | Exception]:
    """The outcome (a value, or the error) of `count` calls made together by `attempt(indices)`;
    those that fail transiently are made again after a backoff until they succeed or
    `policy`'s budget is spent (then their error is a `StorageFailure` naming `what(indices)`).
    Each retry counts in `PROCESS_RETRIES` (and `counter`) and each round is reported on stderr."""
    policy = policy or default_policy()
    results: list[T | Exception | None] = [None] * count
    pending, retry, first_failure = list(range(count)), 0, None
    while True:
        for i, outcome in zip(pending, attempt(pending)):
            results[i] = outcome
        pending = [i for i in pending if isinstance(results[i], Exception) and is_transient(results[i])]
        if not pending:
            return results
        now = time.monotonic()
        first_failure = first_failure if first_failure is not None else now
        waited, delay = now - first_failure, policy.delay(retry)
        error = results[pending[0]]
        if waited + delay > policy.timeout_s or (policy.attempts is not None and retry + 1 >= policy.attempts):
            for i in pending:
                results[i] = _spent(results[i], what([i]), waited, policy)
            return results
        print(
            f"storage: {what(pending)} failed ({error}); retry {retry + 1} in {delay:.2f} s "
            f"({waited:.1f} s of the {policy.timeout_s:g} s budget spent)",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)
        retry += 1
        PROCESS_RETRIES.add(len(pending))
        if counter is not None:
            counter.add(len(pending))


def retrying(call: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """`call()`, retried on transient errors (`retry_each`); its final error is raised."""
    [outcome] = retry_each(lambda _: [_outcome(call)], 1, lambda _: what, policy)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _outcome(call: Callable[[], T]) -> T | Exception:
    try:
        return call()
    except Exception as error:
        return error


def _spent(error: Exception, what: str, waited: float, policy: RetryPolicy) -> StorageFailure:
    failure = StorageFailure(
        f"{what}: the store did not answer within the {policy.timeout_s:g} s budget "
        f"(--storage-timeout; {waited:.1f} s of retries): {error}"
    )
    failure.__cause__ = error
    return failure
