"""Byte ranges of many files in few requests: the read a batch makes of its shards.

The spans a batch wants are merged per file wherever they touch or lie within `MAX_GAP` bytes
(neighbouring members of a tar: a sample's wav, its small json, the next wav), so a contiguous run
of members costs one request. Remote requests go out concurrently (fsspec's `cat_ranges`). A
request that fails transiently is sent again with backoff (`shards.retry`); what is still
unreadable after that, or is missing or forbidden, fails only the spans inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsspec.utils import merge_offset_ranges

from shards.location import Location
from shards.retry import RetryCounter, RetryPolicy, retry_each

MAX_GAP = 16 * 1024  # bytes of other members worth reading to save a request


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of one file."""

    location: Location
    start: int
    end: int


@dataclass
class ReadStats:
    """What reading cost: requests sent (retries included), retries, requests that failed for good."""

    requests: int = 0
    retries: int = 0
    failed: int = 0


def read_spans(
    spans: list[Span], policy: RetryPolicy | None = None, max_gap: int | None = None
) -> tuple[list[bytes | Exception], ReadStats]:
    """The bytes of each span (shorter where its file ends early), or the error that kept them
    (defaults: `shards.retry.default_policy()`, `MAX_GAP`, read when called)."""
    max_gap = MAX_GAP if max_gap is None else max_gap
    stats = ReadStats()
    by_url = {span.location.url: span.location for span in spans}
    urls, starts, ends = merge_offset_ranges(
        [s.location.url for s in spans], [s.start for s in spans], [s.end for s in spans], max_gap=max_gap
    )
    merged = list(zip(urls, starts, ends))
    blocks = _fetch([(by_url[url], start, end) for url, start, end in merged], policy, stats)
    found: dict[str, list[tuple[int, int, bytes | Exception]]] = {}
    for (url, start, end), block in zip(merged, blocks):
        found.setdefault(url, []).append((start, end, block))
    return [_cut(found[span.location.url], span) for span in spans], stats


def _fetch(
    requests: list[tuple[Location, int, int]], policy: RetryPolicy | None, stats: ReadStats
) -> list[bytes | Exception]:
    """Each request's bytes or final error; transient failures are sent again, on their own."""
    retries = RetryCounter()

    def attempt(pending: list[int]) -> list[bytes | Exception]:
        stats.requests += len(pending)
        return _cat_ranges([requests[i] for i in pending])

    def what(pending: list[int]) -> str:
        urls = sorted({requests[i][0].url for i in pending})
        return f"read {urls[0]}" + (f" and {len(urls) - 1} other file(s)" if len(urls) > 1 else "")

    results = retry_each(attempt, len(requests), what, policy, retries)
    stats.retries += retries.retries
    stats.failed += sum(isinstance(r, Exception) for r in results)
    return results


def _cat_ranges(requests: list[tuple[Location, int, int]]) -> list[bytes | Exception]:
    """One pass over the requests, grouped by filesystem (one concurrent call per store)."""
    results: list[bytes | Exception | None] = [None] * len(requests)
    by_fs: dict[int, list[int]] = {}
    for i, (location, _, _) in enumerate(requests):
        by_fs.setdefault(id(location.fs), []).append(i)
    for members in by_fs.values():
        fs = requests[members[0]][0].fs
        paths = [requests[i][0].path for i in members]
        try:
            got = fs.cat_ranges(
                paths, [requests[i][1] for i in members], [requests[i][2] for i in members], on_error="return"
            )
        except Exception as error:  # a store that fails the whole call: every request in it failed
            got = [error] * len(members)
        for i, value in zip(members, got):
            results[i] = value
    return results


def _cut(blocks: list[tuple[int, int, bytes | Exception]], span: Span) -> bytes | Exception:
    """The span's bytes out of the merged block that covers it."""
    for start, end, block in blocks:
        if start <= span.start and (end is None or span.end <= end):
            if isinstance(block, Exception):
                return block
            return block[span.start - start : span.end - start]
    raise AssertionError(f"no merged range covers {span}")
