"""img2dataset with litflow's fetcher (:mod:`curation.fetch`) in place of its urllib download.

img2dataset has no hook for the fetch: ``Downloader.download_shard`` calls the module
function ``img2dataset.downloader.download_image_with_retry`` from its thread pool. The
least fragile takeover found: :func:`guarded_downloading` makes ``img2dataset.download``
build a :class:`GuardedDownloader` (a subclass; img2dataset's own shard loop, writer, hash
and resize steps run unchanged), and that subclass, in whichever process runs the shard (a
spawned worker or a Spark executor: the instance is pickled by reference to this module,
with its policy), points the module function at its :class:`~curation.fetch.Fetcher` before
the shard starts. The replacement stays installed for the life of the process: a process
that ever ran a guarded shard never fetches unguarded again.

The fetcher's failures reach img2dataset as ``litflow:<reason>: detail`` messages, which
:func:`curation.reasons.classify_error` maps back exactly.

Memory: one Fetcher per process (its host gate and DNS cache); img2dataset holds up to
twice its thread count of bodies at once, each at most ``max_body_bytes``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import threading

from img2dataset import downloader as img2dataset_downloader
from img2dataset.downloader import Downloader

from curation.fetch import Fetcher, FetchFailed, FetchPolicy
from curation.reasons import TRANSIENT_REASONS

_LOCK = threading.Lock()
_FETCHER: Fetcher | None = None


def _guarded_download_with_retry(row, timeout=None, retries=0, user_agent_token=None,
                                 disallowed_header_directives=None):
    """img2dataset's ``download_image_with_retry`` signature; the policy is the fetcher's
    (img2dataset's timeout, user agent and directives are superseded by it). Only transient
    failures are tried again."""
    key, url = row
    fetcher = _FETCHER
    if fetcher is None:  # never fetch without a policy
        return key, None, "litflow:other: no fetch policy installed in this process"
    failure = None
    for _ in range(int(retries) + 1):
        try:
            return key, io.BytesIO(fetcher.fetch(url)), None
        except FetchFailed as failed:
            failure = failed
            if failed.reason not in TRANSIENT_REASONS:
                break
    return key, None, failure.message


def install(policy: FetchPolicy) -> Fetcher:
    """Point img2dataset's download function at a fetcher with ``policy`` (one per process and
    policy) and return it."""
    global _FETCHER
    with _LOCK:
        if _FETCHER is None or _FETCHER.policy != policy:
            _FETCHER = Fetcher(policy)
        img2dataset_downloader.download_image_with_retry = _guarded_download_with_retry
        return _FETCHER


class GuardedDownloader(Downloader):
    """img2dataset's Downloader whose every fetch goes through :class:`~curation.fetch.Fetcher`."""

    fetch_policy: FetchPolicy = FetchPolicy()
    # added to img2dataset's shard numbers (file names and keys): a retry round numbers its
    # shards after every earlier one, so its keys never collide with theirs
    shard_offset: int = 0

    def download_shard(self, row):
        install(self.fetch_policy)
        shard_id, shard_file = row
        return super().download_shard((shard_id + self.shard_offset, shard_file))


@contextlib.contextmanager
def guarded_downloading(policy: FetchPolicy, shard_offset: int = 0):
    """Make img2dataset.download build a GuardedDownloader with ``policy`` (and its shards
    numbered from ``shard_offset``) for the block."""

    def build(*args, **kwargs) -> GuardedDownloader:
        downloader = GuardedDownloader(*args, **kwargs)
        downloader.fetch_policy = policy  # instance attributes: pickled with the instance
        downloader.shard_offset = shard_offset
        return downloader

    img2dataset_main = importlib.import_module("img2dataset.main")  # the package re-exports a function `main`
    original = img2dataset_main.Downloader
    img2dataset_main.Downloader = build
    try:
        yield
    finally:
        img2dataset_main.Downloader = original
