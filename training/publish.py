"""Publishing a trained model as ``latest`` only when it is not worse, with a history.

``MODELS/latest.json`` names the published run and the metrics it was published with;
``MODELS/history.jsonl`` gets one line per decision (published or not, and why). A candidate
is compared with ``latest`` on the *same* evaluation: when the recorded metrics of ``latest``
come from other eval sets or splits, ``latest`` is evaluated again on the candidate's
evaluation first. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from infra.files import write_json_atomic


def _write_json(path: Path, value: dict) -> None:
    write_json_atomic(path, value, sort_keys=True, default=str)


def read_latest(models_dir: str | Path) -> dict | None:
    path = Path(models_dir) / "latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def history(models_dir: str | Path) -> list[dict]:
    path = Path(models_dir) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def evaluation_of(metrics: dict) -> dict:
    """What an evaluation was run on: the part that must match for two headlines to compare."""
    sets = metrics.get("sets", {})
    return {"eval_sets": sorted(sets), "split": metrics.get("split"),
            "limits": {name: s.get("limit") for name, s in sorted(sets.items())}}


def publish_if_not_worse(models_dir: str | Path, run_dir: str | Path, metrics: dict,
                         headline: Callable[[dict], float],
                         evaluate_latest: Callable[[str], dict]) -> dict:
    """Publish ``run_dir`` as latest when its headline >= latest's on the same evaluation."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    latest = read_latest(models_dir)
    score = headline(metrics)
    decision = {"run": str(run_dir), "headline": score, "evaluation": evaluation_of(metrics),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if latest is None:
        decision |= {"published": True, "reason": "no model published yet"}
    elif Path(latest["run"]) == Path(run_dir):
        decision |= {"published": False, "reason": "this run is already latest"}
    else:
        latest_metrics = latest["metrics"]
        if evaluation_of(latest_metrics) != evaluation_of(metrics):
            latest_metrics = evaluate_latest(latest["run"])  # compare like with like
        previous = headline(latest_metrics)
        decision["latest_headline"] = previous
        if score >= previous:
            decision |= {"published": True, "reason": f"headline {score:.4f} >= latest {previous:.4f}"}
        else:
            decision |= {"published": False, "reason": f"headline {score:.4f} < latest {previous:.4f}: kept latest"}
    with open(models_dir / "history.jsonl", "a") as f:
        f.write(json.dumps(decision, sort_keys=True, default=str) + "\n")
    if decision["published"]:
        _write_json(models_dir / "latest.json", {"run": str(run_dir), "metrics": metrics, "headline": score,
                                                 "published": decision["time"]})
    return decision
