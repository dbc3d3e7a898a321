"""Per-host download outcomes: which sites a crawl's failures come from, and why.

Answers "why is my success rate low?" (img2dataset #430, #439, #400): rows, downloaded and
failed by reason for the hosts with the most failures, in ``ingest.json`` and the
build-corpus summary.

Memory: the tally keeps at most ``capacity`` hosts (default 20,000). It is updated one part
at a time and, when it grows past its capacity, cut back to the hosts with the most failures;
a host cut and met again later starts from zero, so its counts are then a lower bound and the
report says so (``exact: false``). Lists with fewer distinct hosts than the capacity are
counted exactly.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

NO_HOST = "(no host)"


def host_of(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or NO_HOST).lower()
    except ValueError:
        return NO_HOST


class HostTally:
    def __init__(self, capacity: int = 20_000):
        self.capacity = capacity
        self.rows: Counter = Counter()
        self.downloaded: Counter = Counter()
        self.failed: dict[str, Counter] = {}  # host -> reason -> rows
        self.exact = True

    def add(self, url: str, reason: str | None) -> None:
        host = host_of(url)
        self.rows[host] += 1
        if reason is None:
            self.downloaded[host] += 1
        else:
            self.failed.setdefault(host, Counter())[reason] += 1

    def failures(self, host: str) -> int:
        return sum(self.failed.get(host, {}).values())

    def prune(self) -> None:
        if len(self.rows) <= self.capacity:
            return
        keep = set(sorted(self.rows, key=lambda h: (-self.failures(h), -self.rows[h], h))[: self.capacity])
        for host in [h for h in self.rows if h not in keep]:
            del self.rows[host]
            self.downloaded.pop(host, None)
            self.failed.pop(host, None)
        self.exact = False

    def top(self, n: int = 20) -> list[dict]:
        """The n hosts with the most failed rows (ties: more rows, then by name)."""
        hosts = sorted((h for h in self.rows if self.failures(h)), key=lambda h: (-self.failures(h), -self.rows[h], h))
        return [{"host": h, "rows": self.rows[h], "downloaded": self.downloaded[h],
                 "failed": dict(sorted(self.failed[h].items()))} for h in hosts[:n]]

    def report(self, n: int = 20) -> dict:
        return {"top_by_failures": self.top(n), "hosts_counted": len(self.rows), "exact": self.exact}
