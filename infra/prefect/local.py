"""Start, use and stop a project-local Prefect stack: server (SQLite) + one serve process.

Each process is started in its own session and recorded in a PID file under the state
folder, so ``stop`` ends exactly what was started here and nothing else.

    python -m infra.prefect.local up      # server + serve process, left running
    python -m infra.prefect.local demo    # up, then run build-corpus/demo --watch
    python -m infra.prefect.local stop
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.paths import PROJECT_ROOT, default_work_dir

BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LocalPrefect:
    state_dir: Path = PROJECT_ROOT / ".run"
    home: Path = PROJECT_ROOT / ".prefect"
    host: str = "127.0.0.1"
    port: int = 4200
    extra_env: dict | None = None   # e.g. LITFLOW_WORK for tests, scheduler loop settings

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": self.host,
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONUNBUFFERED": "1",
            **(self.extra_env or {}),
        }

    # -- processes --------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _running(self, name: str) -> int | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text().split()[0])
        return pid if _alive(pid) else None

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, env=self.env(), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._pid_file(name).write_text(f"{proc.pid}\n")
        return proc

    def _log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.state_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start_server(self, timeout_s: float = 180) -> None:
        if (pid := self._running("prefect-server")) is not None:
            raise StackError(f"a litflow Prefect server is already running here (pid {pid}); `make stop` first")
        with socket.socket() as sock:
            if sock.connect_ex((self.host, self.port)) == 0:
                raise StackError(f"port {self.port} on {self.host} is in use by another program; "
                                 f"stop it or choose another port (LITFLOW_PREFECT_PORT)")
        self.home.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("prefect-server", [str(BIN / "prefect"), "server", "start",
                                              "--host", self.host, "--port", str(self.port)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"Prefect server exited with {proc.returncode}:\n{self._log_tail('prefect-server')}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise StackError(f"Prefect server not healthy after {timeout_s}s:\n{self._log_tail('prefect-server')}")

    def deployment_exists(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/deployments/name/{name}", timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start_serve(self, expect: str = "build-corpus/demo", timeout_s: float = 120,
                    serve_args: list[str] | None = None) -> None:
        if (pid := self._running("serve")) is not None:
            raise StackError(f"a litflow serve process is already running here (pid {pid}); `make stop` first")
        proc = self._spawn("serve", [str(BIN / "litflow"), "serve", *(serve_args or [])])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"`litflow serve` exited with {proc.returncode}:\n{self._log_tail('serve')}")
            if self.deployment_exists(expect):
                return
            time.sleep(0.5)
        raise StackError(f"deployment {expect} not registered after {timeout_s}s:\n{self._log_tail('serve')}")

    def run_deployment(self, name: str, params: dict | None = None, timeout_s: float | None = None) -> int:
        """`prefect deployment run NAME --watch`: its exit code (0 success, non-zero failure)."""
        cmd = [str(BIN / "prefect"), "deployment", "run", name, "--watch"]
        if params:
            cmd += ["--params", json.dumps(params)]
        return subprocess.run(cmd, env=self.env(), cwd=PROJECT_ROOT, timeout=timeout_s).returncode

    def stop(self, grace_s: float = 10) -> list[str]:
        """Stop the serve process, then the server; returns what was stopped."""
        stopped = []
        for name in ("serve", "prefect-server"):
            pid = self._running(name)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGTERM)  # its own session: pgid == pid
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + grace_s
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _alive(pid):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                stopped.append(f"{name} (pid {pid})")
            self._pid_file(name).unlink(missing_ok=True)
        return stopped


def _demo(stack: LocalPrefect) -> int:
    """build-corpus/demo, then retrain-lit/nightly on its corpus; print where everything is."""
    out = default_work_dir() / "demo"
    code = stack.run_deployment("build-corpus/demo")
    if code != 0:
        print(f"build-corpus/demo failed (exit {code}); logs: {stack.state_dir}", file=sys.stderr)
        return code
    print(f"\ncorpus:       {out / 'curated'}  (manifest {out / 'curated' / 'corpus.json'})\n"
          f"audit report: {out / 'dedup-report' / 'report.html'}", flush=True)
    # a demo-sized budget: 60 steps of batch 32, at most 300 test images per eval set; no
    # embedding check, which would embed all ~12k eval images with EfficientNet (~9 min on 2
    # cores; curation already removed the verified pHash duplicates)
    code = stack.run_deployment("retrain-lit/nightly", {"corpus": str(out / "curated"), "steps": 60,
                                                        "batch_size": 32, "warmup": 6, "eval_limit": 300,
                                                        "eval_check": False})
    if code != 0:
        print(f"retrain-lit/nightly failed (exit {code}); logs: {stack.state_dir}", file=sys.stderr)
        return code
    models = default_work_dir() / "models"
    latest = models / "latest.json"
    if latest.exists():
        run = json.loads(latest.read_text())["run"]
        print(f"metrics:      {Path(run) / 'eval' / 'metrics.json'}  (summary {Path(run) / 'eval' / 'summary.md'})")
    print(f"models:       {models}  (latest.json, history.jsonl)\nUI:           http://{stack.host}:{stack.port}"
          f"   stop with: make stop")
    return 0


def _from_env() -> LocalPrefect:
    return LocalPrefect(port=int(os.environ.get("LITFLOW_PREFECT_PORT", "4200")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.prefect.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "demo", "stop"))
    args = parser.parse_args(argv)
    stack = _from_env()
    try:
        if args.action == "stop":
            stopped = stack.stop()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
            return 0
        print(f"starting Prefect server at {stack.api_url} (PREFECT_HOME={stack.home}) ...", flush=True)
        stack.start_server()
        print("starting `litflow serve` (registers the deployments) ...", flush=True)
        stack.start_serve()
        print(f"UI: http://{stack.host}:{stack.port}   stop with: make stop", flush=True)
        if args.action == "demo":
            return _demo(stack)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
