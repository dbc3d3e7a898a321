"""A SparkSession for litflow jobs, configured so executors use this Python and stay quiet."""

from __future__ import annotations

import contextlib
import os
import sys
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _master_host(master: str) -> str | None:
    if master.startswith("local"):
        return "127.0.0.1"
    return urlsplit(master).hostname


@contextlib.contextmanager
def spark_session(master: str, app_name: str = "litflow", driver_host: str | None = None,
                  driver_memory: str = "2g", executor_memory: str | None = None):
    """Create (and finally stop) a session on ``master`` (``local[N]`` or ``spark://host:port``).

    On a loopback master the driver binds to 127.0.0.1 as well; on a real cluster pass the
    driver's address as seen from the workers (``driver_host``).
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.memory", driver_memory)
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.executorEnv.NO_ALBUMENTATIONS_UPDATE", "1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
    )
    if executor_memory:
        builder = builder.config("spark.executor.memory", executor_memory)
    host = driver_host or (_master_host(master) if _master_host(master) in LOOPBACK else None)
    if host:
        builder = builder.config("spark.driver.host", host).config("spark.driver.bindAddress", host)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    try:
        yield session
    finally:
        session.stop()
