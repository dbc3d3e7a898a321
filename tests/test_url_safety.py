"""The URL policy refuses internal targets before any connection is made."""

from __future__ import annotations

import pytest

from curation.url_safety import UrlPolicy


def no_dns(host):  # IP literals must never reach the resolver
    raise AssertionError(f"resolver called for {host}")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.jpg", "http://172.16.5.4/a.jpg", "http://192.168.1.1/a.jpg",
        "http://127.0.0.1:8080/a.jpg", "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.251/a.jpg", "http://0.0.0.0/a.jpg", "http://[::1]/a.jpg",
        "http://[fe80::1]/a.jpg", "http://[fc00::1]/a.jpg", "http://[::ffff:10.0.0.1]/a.jpg",
        "http://100.64.0.1/a.jpg",  # carrier-grade NAT: not global
    ],
)
def test_internal_literals_are_refused(url):
    problem = UrlPolicy().check(url, resolve=no_dns)
    assert problem is not None and "internal address" in problem


@pytest.mark.parametrize("url", ["http://93.184.215.14/a.jpg", "https://[2606:4700::1111]/a.jpg"])
def test_public_literals_pass(url):
    assert UrlPolicy().check(url, resolve=no_dns) is None


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://example.org/a.jpg", "scheme not allowed: ftp"),
        ("file:///etc/passwd", "scheme not allowed: file"),
        ("gopher://x/", "scheme not allowed"),
        ("example.org/a.jpg", "scheme not allowed: (none)"),
        ("http:///a.jpg", "no host"),
        ("http://example.org:99999/a.jpg", "malformed url"),
    ],
)
def test_bad_schemes_and_malformed_urls(url, fragment):
    problem = UrlPolicy().check(url, resolve=no_dns)
    assert problem is not None and fragment in problem


def test_host_names_are_judged_by_what_they_resolve_to():
    table = {"public.test": ["93.184.215.14"], "sneaky.test": ["93.184.215.14", "10.0.0.7"], "inside.test": ["192.168.0.2"]}
    resolve = table.__getitem__
    policy = UrlPolicy()
    assert policy.check("http://public.test/a.jpg", resolve=resolve) is None
    assert "10.0.0.7" in policy.check("http://sneaky.test/a.jpg", resolve=resolve)
    assert "192.168.0.2" in policy.check("http://inside.test/a.jpg", resolve=resolve)


def test_unresolvable_host():
    def fail(host):
        raise OSError("Name or service not known")

    assert "does not resolve" in UrlPolicy().check("http://nowhere.invalid/a.jpg", resolve=fail)


def test_explicit_allowances():
    policy = UrlPolicy.allowing(["127.0.0.1", "10.2.0.0/16", "files.internal"])
    assert policy.check("http://127.0.0.1:8765/a.jpg", resolve=no_dns) is None
    assert policy.check("http://10.2.3.4/a.jpg", resolve=no_dns) is None
    assert policy.check("http://10.3.0.1/a.jpg", resolve=no_dns) is not None  # outside the block
    assert policy.check("http://127.0.0.2/a.jpg", resolve=no_dns) is not None  # /32 only
    assert policy.check("http://FILES.internal/a.jpg", resolve=no_dns) is None
    assert policy.describe()["allow_networks"] == ["127.0.0.1/32", "10.2.0.0/16"]
