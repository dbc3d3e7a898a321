"""The per-host tally: exact under its capacity, a lower bound (and saying so) past it."""

from __future__ import annotations

from curation.host_report import NO_HOST, HostTally, host_of


def test_hosts_are_lower_case_names_and_odd_urls_have_none():
    assert host_of("http://IMG.Example.com:8080/a.jpg") == "img.example.com"
    assert host_of("") == NO_HOST and host_of("http://[::1") == NO_HOST


def test_exact_counts_and_order_by_failures():
    tally = HostTally()
    for i in range(5):
        tally.add(f"http://a.example/{i}.jpg", "timeout" if i < 3 else None)
    tally.add("http://b.example/x.jpg", "http_404")
    tally.add("http://c.example/x.jpg", None)
    report = tally.report()
    assert report["exact"] is True
    assert report["top_by_failures"] == [
        {"host": "a.example", "rows": 5, "downloaded": 2, "failed": {"timeout": 3}},
        {"host": "b.example", "rows": 1, "downloaded": 0, "failed": {"http_404": 1}},
    ]  # c.example failed nothing: not listed


def test_past_capacity_the_hosts_with_most_failures_are_kept_and_the_report_says_so():
    tally = HostTally(capacity=2)
    for host, failures in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(failures):
            tally.add(f"http://{host}.example/x", "timeout")
    tally.prune()
    assert [h["host"] for h in tally.top()] == ["a.example", "c.example"]
    assert tally.report()["exact"] is False and tally.report()["hosts_counted"] == 2
