"""Ingestion through img2dataset's pyspark distributor on a real standalone Spark cluster."""

from __future__ import annotations

import json
import urllib.request

import pandas as pd
import pytest

from curation.ingest import IngestConfig, ingest
from infra.spark.cluster import SparkCluster
from tests.conftest import HOSTILE_LIMITS, free_port
from tests.test_ingest import check_outcome, samples_by_row, write_list

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SparkCluster(
        tmp_path_factory.mktemp("spark"),
        master_port=free_port(),
        master_webui_port=free_port(),
        worker_cores=2,
        worker_memory="2g",
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_ingest_on_a_standalone_cluster_matches_multiprocessing(cluster, hostile_site, tmp_path):
    rows, _ = hostile_site
    url_list = write_list(rows, tmp_path / "urls.parquet")
    common = dict(processes=2, threads=8, samples_per_shard=10, **HOSTILE_LIMITS)
    spark_report = ingest(url_list, tmp_path / "spark", IngestConfig(distributor="pyspark", spark_master=cluster.master_url, **common))
    local_report = ingest(url_list, tmp_path / "local", IngestConfig(**common))

    check_outcome(rows, tmp_path / "spark", spark_report)
    for key in ("rows_in", "downloaded", "failed"):
        assert spark_report[key] == local_report[key]
    spark_samples, local_samples = samples_by_row(tmp_path / "spark"), samples_by_row(tmp_path / "local")
    assert sorted(spark_samples) == sorted(local_samples)
    for row, (meta, _, caption) in spark_samples.items():
        assert meta["key"] == local_samples[row][0]["key"] and caption == local_samples[row][2]
    assert pd.read_parquet(tmp_path / "spark" / "rejected.parquet").equals(
        pd.read_parquet(tmp_path / "local" / "rejected.parquet")
    )

    # the work ran on the cluster: the master lists our application
    with urllib.request.urlopen(f"{cluster.webui_url}/json/", timeout=5) as response:
        status = json.load(response)
    apps = status.get("completedapps", []) + status.get("activeapps", [])
    assert any(app["name"] == "litflow-ingest" for app in apps)


def test_cluster_refuses_a_port_in_use(cluster, tmp_path):
    from infra.spark.cluster import ClusterError

    clash = SparkCluster(tmp_path, master_port=cluster.master_port, master_webui_port=free_port())
    with pytest.raises(ClusterError, match="already in use"):
        clash.start()
