"""Start and stop a Spark standalone cluster (one master, N workers) with what the pyspark
wheel ships.

The pip package has ``sbin/spark-daemon.sh`` but not ``start-master.sh``/``start-worker.sh``,
so the daemons are started through spark-daemon.sh directly; it writes a PID file per daemon
under ``pid_dir``, and ``stop`` uses the same folder, so only what we started is stopped.
Hosts other than this machine are reached with ``ssh HOST``; they need the same venv path.

    python -m infra.spark.cluster start --state .run/spark      # master + 1 worker on 127.0.0.1
    python -m infra.spark.cluster stop --state .run/spark
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyspark

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOCAL_HOSTS = {"127.0.0.1", "localhost", socket.gethostname()}


class ClusterError(RuntimeError):
    pass


def spark_home() -> Path:
    return Path(pyspark.__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class SparkCluster:
    state_dir: Path                      # PID files, logs, work dirs, cluster.json
    master_host: str = "127.0.0.1"
    master_port: int = 7077
    master_webui_port: int = 8080
    worker_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    worker_cores: int = 1
    worker_memory: str = "2g"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()

    @property
    def master_url(self) -> str:
        return f"spark://{self.master_host}:{self.master_port}"

    @property
    def webui_url(self) -> str:
        return f"http://{self.master_host}:{self.master_webui_port}"

    def _env(self, host: str) -> dict[str, str]:
        return {
            "SPARK_HOME": str(spark_home()),
            "SPARK_PID_DIR": str(self.state_dir / "pids"),
            "SPARK_LOG_DIR": str(self.state_dir / "logs"),
            "SPARK_WORKER_DIR": str(self.state_dir / "work"),
            "SPARK_LOCAL_IP": host,
            "SPARK_IDENT_STRING": "litflow",
            "PYSPARK_PYTHON": sys.executable,
            "NO_ALBUMENTATIONS_UPDATE": "1",
        }

    def _daemon(self, host: str, action: str, cls: str, instance: int, *args: str) -> None:
        script = str(spark_home() / "sbin" / "spark-daemon.sh")
        env = self._env(host)
        cmd = [script, action, cls, str(instance), *args]
        if host in LOCAL_HOSTS:
            done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        else:
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            remote = f"mkdir -p {shlex.quote(env['SPARK_LOG_DIR'])} && {exports} {shlex.join(cmd)}"
            done = subprocess.run(["ssh", host, remote], capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"spark-daemon.sh {action} {cls} on {host} failed: {done.stderr or done.stdout}")

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=2) as response:
                status = json.load(response)
        except OSError:
            return -1
        return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")

    def start(self, timeout_s: float = 120) -> "SparkCluster":
        """Start the master and every worker; wait until all workers are registered and alive."""
        for port in (self.master_port, self.master_webui_port):
            with socket.socket() as sock:
                if sock.connect_ex((self.master_host, port)) == 0:
                    raise ClusterError(f"port {port} on {self.master_host} is already in use; choose another")
        for sub in ("pids", "logs", "work"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._daemon(self.master_host, "start", MASTER_CLASS, 1, "--host", self.master_host,
                     "--port", str(self.master_port), "--webui-port", str(self.master_webui_port))
        for index, host in enumerate(self.worker_hosts, start=1):
            self._daemon(host, "start", WORKER_CLASS, index, self.master_url, "--host", host,
                         "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                         "--webui-port", "0")
        (self.state_dir / "cluster.json").write_text(json.dumps(asdict(self), default=str, indent=2))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.alive_workers() == len(self.worker_hosts):
                return self
            time.sleep(0.5)
        logs = sorted((self.state_dir / "logs").glob("*.out"))
        tail = logs[-1].read_text()[-2000:] if logs else "(no logs)"
        self.stop()
        raise ClusterError(f"workers did not register with {self.master_url} within {timeout_s}s; last log:\n{tail}")

    def stop(self) -> None:
        """Stop the workers, then the master (by their PID files). Safe to call twice."""
        errors = []
        for index, host in enumerate(self.worker_hosts, start=1):
            try:
                self._daemon(host, "stop", WORKER_CLASS, index)
            except ClusterError as err:
                errors.append(str(err))
        try:
            self._daemon(self.master_host, "stop", MASTER_CLASS, 1)
        except ClusterError as err:
            errors.append(str(err))
        if errors:
            raise ClusterError("; ".join(errors))

    @classmethod
    def load(cls, state_dir: Path) -> "SparkCluster":
        path = Path(state_dir) / "cluster.json"
        if not path.exists():
            raise ClusterError(f"{path}: no cluster was started with this state folder")
        return cls(**json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.spark.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--state", default=".run/spark", help="state folder (PID files, logs); default .run/spark")
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=7077)
    parser.add_argument("--webui-port", type=int, default=8080)
    parser.add_argument("--worker", action="append", dest="workers", metavar="HOST", help="worker host (repeatable; default 127.0.0.1)")
    parser.add_argument("--worker-cores", type=int, default=1)
    parser.add_argument("--worker-memory", default="2g")
    args = parser.parse_args(argv)
    if args.action == "start":
        cluster = SparkCluster(Path(args.state), args.master_host, args.master_port, args.webui_port,
                               args.workers or ["127.0.0.1"], args.worker_cores, args.worker_memory).start()
        print(f"Spark master {cluster.master_url} (UI {cluster.webui_url}), {len(cluster.worker_hosts)} worker(s) alive")
    elif args.action == "stop":
        SparkCluster.load(Path(args.state)).stop()
        print("Spark cluster stopped")
    else:
        cluster = SparkCluster.load(Path(args.state))
        print(f"{cluster.master_url}: {cluster.alive_workers()} worker(s) alive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
