"""Fetch benchmark: litflow's guarded fetcher against img2dataset's own urllib download, side by side.

    .venv/bin/python bench/bench_fetch.py [--images 2000] [--threads 16] [--rounds 3]

Both fetch the same real demo images (openclipart + emoji) from one loopback file server with
the same thread count, in alternating rounds in one process (the machine is shared and noisy:
only the ratio, taken per round, is meant to travel). The guarded fetcher runs with its host
limits lifted (the server is ours), so the figure is the cost of the per-hop policy check, the
pinned connection, the watchdog and the capped streaming read. Prints images/s for each and
the ratio guarded / urllib per round and its median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset.downloader import download_image  # noqa: E402

from curation.demo_data import fetch_all, write_url_list  # noqa: E402
from curation.fetch import Fetcher, FetchPolicy  # noqa: E402
from curation.file_server import serve_folder  # noqa: E402
from curation.url_safety import UrlPolicy  # noqa: E402


def timed(fetch_one, urls, threads) -> tuple[float, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(fetch_one, urls))
    return time.perf_counter() - started, sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import pandas as pd

    data = fetch_all()
    with serve_folder(data.cache) as base_url:
        listing = write_url_list(data.catalogue, base_url, Path("/tmp/litflow_bench_fetch_urls.parquet"), None)
        urls = sorted(pd.read_parquet(listing)["url"])[: args.images]
        fetcher = Fetcher(FetchPolicy(url_policy=UrlPolicy.allowing(["127.0.0.1"]), host_connections=args.threads,
                                      host_requests_per_s=0))

        def guarded(url):
            return len(fetcher.fetch(url))

        def urllib_fetch(url):
            _, stream, err = download_image((0, url), 10, None, None)
            if err:
                raise RuntimeError(err)
            return len(stream.getvalue())

        timed(guarded, urls[:100], args.threads)  # warm both paths and the server's page cache
        timed(urllib_fetch, urls[:100], args.threads)
        ratios = []
        for round_ in range(args.rounds):
            t_urllib, b_urllib = timed(urllib_fetch, urls, args.threads)
            t_guarded, b_guarded = timed(guarded, urls, args.threads)
            assert b_urllib == b_guarded, "both must fetch the same bytes"
            ratios.append((len(urls) / t_guarded) / (len(urls) / t_urllib))
            print(f"round {round_ + 1}: urllib {len(urls) / t_urllib:7.0f} img/s, guarded {len(urls) / t_guarded:7.0f} "
                  f"img/s, ratio guarded/urllib {ratios[-1]:.2f}  ({b_guarded / 1e6:.1f} MB each)")
    print(f"median ratio guarded/urllib over {args.rounds} rounds: {statistics.median(ratios):.2f} "
          f"({len(urls)} images, {args.threads} threads)")


if __name__ == "__main__":
    main()
