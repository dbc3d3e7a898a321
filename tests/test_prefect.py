"""Deployments served and run through a real Prefect server; schedules; kill and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from infra.prefect.local import LocalPrefect, StackError
from tests.conftest import free_port

pytestmark = pytest.mark.slow
AUDIT_INTERVAL_S = 10


def api(stack, path, body=None):
    request = urllib.request.Request(f"{stack.api_url}{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_data, work):
    root = tmp_path_factory.mktemp("prefect")
    stack = LocalPrefect(state_dir=root / "run", home=root / "home", port=free_port(),
                         extra_env={"LITFLOW_WORK": str(work), "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5"})
    try:
        stack.start_server()
        stack.start_serve(serve_args=["--interval", f"dedup-report/audit={AUDIT_INTERVAL_S}"])
        yield stack
    finally:
        stack.stop()


def test_demo_deployment_runs_to_completion(stack, work):
    code = stack.run_deployment("build-corpus/demo", {"demo_per_source": 15, "demo_port": free_port()}, timeout_s=600)
    assert code == 0
    out = work / "demo"
    ingest = json.loads((out / "ingest" / "ingest.json").read_text())
    assert ingest["rows_in"] == 30 and ingest["rows_in"] == ingest["downloaded"] + sum(ingest["failed"].values())
    corpus = json.loads((out / "curated" / "corpus.json").read_text())
    assert corpus["inputs"] == ingest["downloaded"] == corpus["kept"] + sum(corpus["rejected"].values())
    assert corpus["config"]["image"]["min_side"] == 48 and corpus["preset"] == "lit-relaxed"
    # every emoji of the corpus is an image of the emoji eval set: train+test de-dup removes them all
    import pandas as pd

    kept_urls = pd.concat([pd.read_parquet(p, columns=["url"]) for p in (out / "curated" / "shards").glob("*.parquet")])
    assert not kept_urls["url"].str.contains("/emoji/").any()
    assert sum(corpus["eval_duplicates"]["emoji"].values()) >= 1
    assert (out / "dedup-report" / "report.html").stat().st_size > 0
    keys = {a["key"] for a in api(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": [
        "build-corpus-summary", "build-corpus-ingest", "build-corpus-dedup-report", "build-corpus-progress"]}}})}
    assert keys == {"build-corpus-summary", "build-corpus-ingest", "build-corpus-dedup-report", "build-corpus-progress"}


def test_retrain_deployment_trains_evaluates_and_publishes(stack, work):
    params = {"corpus": str(work / "demo" / "curated"), "models": str(work / "models"), "image_tower": "tiny",
              "text_tower": "scratch", "steps": 8, "batch_size": 8, "eval_sets": ["mnist"]}
    assert stack.run_deployment("retrain-lit/nightly", params, timeout_s=600) == 0
    latest = json.loads((work / "models" / "latest.json").read_text())
    metrics = json.loads((next((work / "models" / "runs").iterdir()) / "eval" / "metrics.json").read_text())
    # the embedding check ran on the cached embeddings, against the index the corpus was curated with
    import pandas as pd

    (flags_json,) = (work / "models" / "eval-flags").glob("*/flags.json")
    flags = json.loads(flags_json.read_text())
    assert flags["eval_images"] > 0 and flags["candidates"] >= flags["flagged"]
    assert pd.read_parquet(flags_json.parent / "eval_flags.parquet")["key"].nunique() == flags["flagged"]
    # the run's summary names the candidates file and the audit that joins it to curation's removals
    (summary,) = api(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": ["retrain-lit-summary"]}}})
    candidates = flags_json.parent / "eval_candidates.parquet"
    assert candidates.exists() and f"-p embedding_candidates={candidates}" in summary["data"]
    assert f"{flags['flagged']} of {flags['candidates']} candidate pairs" in summary["data"]
    assert latest["metrics"]["sets"].keys() == metrics["sets"].keys() == {"mnist"}
    # the same job again finds its finished run: nothing new to publish, and the history says so
    assert stack.run_deployment("retrain-lit/nightly", params, timeout_s=600) == 0
    history = [json.loads(line) for line in (work / "models" / "history.jsonl").read_text().splitlines()]
    assert [h["published"] for h in history] == [True, False] and "already latest" in history[1]["reason"]
    schedules = api(stack, "/deployments/name/retrain-lit/nightly")["schedules"]
    assert [s["schedule"].get("cron") for s in schedules] == ["0 3 * * *"]


def test_dedup_report_shows_the_embedding_checks_removals(stack, work, tmp_path):
    """dedup-report with the embedding check's candidates: a pair only the embedding proposed
    (no pHash match) is in the report, removed, with its signal and verdict."""
    import pandas as pd

    from infra.contract import MATCH_SCHEMA, NO_DISTANCE

    corpus = work / "demo" / "ingest" / "shards"  # written by test_demo_deployment_runs_to_completion
    keys = pd.concat([pd.read_parquet(p, columns=["key", "status"]) for p in sorted(corpus.glob("*.parquet"))])
    split = work / "demo" / "evalindex" / "splits" / "clipart__test.parquet"
    eval_key = pd.read_parquet(split, columns=["key"])["key"].iloc[0]
    baseline = tmp_path / "plain"
    assert stack.run_deployment("dedup-report/audit", {"corpus": str(corpus), "output": str(baseline)},
                                timeout_s=300) == 0
    proposed = set(pd.read_parquet(baseline / "report" / "matches.parquet")["key"])
    key = sorted(set(keys.loc[keys["status"] == "success", "key"]) - proposed)[0]  # pHash proposed nothing for it
    row = {"key": key, "eval_set": "clipart", "eval_split": "test", "eval_key": eval_key, "signal": "embedding",
           "distance": NO_DISTANCE, "cosine": 0.97, "confirmed": True, "undecided": False,
           "verification": "confirmed: 40 inliers (test row)", "flagged": True}
    candidates = tmp_path / "eval_candidates.parquet"
    pd.DataFrame([row]).astype({"distance": "int32", "cosine": "float32"}).to_parquet(candidates)
    assert set(pd.read_parquet(candidates).columns) == set(MATCH_SCHEMA.names)
    out = tmp_path / "audit"
    assert stack.run_deployment("dedup-report/audit", {"corpus": str(corpus), "output": str(out),
                                                       "embedding_candidates": str(candidates)}, timeout_s=300) == 0
    matches = pd.read_parquet(out / "report" / "matches.parquet")
    mine = matches[matches["key"] == key]
    assert len(mine) == 1 and mine["signal"].iloc[0] == "embedding" and bool(mine["removed"].iloc[0])
    assert mine["verification"].iloc[0] == row["verification"] and mine["distance"].iloc[0] == NO_DISTANCE
    summary = json.loads((out / "report" / "report.json").read_text())["corpus"]
    plain = json.loads((baseline / "report" / "report.json").read_text())["corpus"]
    assert summary["removed"] == plain["removed"] + 1


def test_a_failing_run_exits_non_zero(stack, tmp_path):
    code = stack.run_deployment("build-corpus/demo", {"url_list": str(tmp_path / "missing.parquet"),
                                                      "output": str(tmp_path / "x")}, timeout_s=300)
    assert code != 0


def test_interval_schedule_creates_and_completes_runs(stack):
    deployment = api(stack, "/deployments/name/dedup-report/audit")
    deadline = time.monotonic() + 180
    completed = []
    while time.monotonic() < deadline and not completed:
        runs = api(stack, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}},
                                                "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        completed = [r for r in runs if r.get("auto_scheduled")]
        time.sleep(2)
    assert completed, "no scheduled dedup-report/audit run completed within 180 s"


FLOW_SCRIPT = textwrap.dedent("""
    import json, sys
    if __name__ == "__main__":
        from flows.build_corpus import build_corpus
        from flows.serve import DEMO_CURATION
        result = build_corpus(output=sys.argv[1], demo_per_source=20, demo_port=int(sys.argv[2]),
                              curation_config=str(DEMO_CURATION), eval_keypoints=False)
        print("RESULT " + json.dumps(result))
""")


def _run_flow(script, out, port, env):
    return subprocess.Popen([sys.executable, str(script), str(out), str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _result(proc, timeout=600):
    output = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, output[-4000:]
    return json.loads(next(line[7:] for line in output.splitlines() if line.startswith("RESULT ")))


def _group_gone(pgid, within_s):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _fingerprint(folder, skip=""):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("timing.json", skip)}


def test_killed_run_resumes_and_matches_an_uninterrupted_run(stack, tmp_path):
    script = tmp_path / "flow.py"
    script.write_text(FLOW_SCRIPT)
    env = {**stack.env(), "PYTHONPATH": str(os.getcwd())}
    port = free_port()
    reference = _result(_run_flow(script, tmp_path / "reference", port, env))
    assert reference["skipped"] == []

    out = tmp_path / "killed"
    proc = _run_flow(script, out, port, env)
    try:
        deadline = time.monotonic() + 300
        # kill the whole run (flow process, img2dataset and Beam workers) once curation has begun
        while not ((out / ".stages" / "eval-index.json").exists() and (out / "curated").exists()):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "curation never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / ".stages" / "curate.json").exists()  # it really died mid-stage
    assert _group_gone(proc.pid, within_s=30)  # nothing of it is left
    ingest_mtime = (out / "ingest" / "ingest.json").stat().st_mtime_ns

    resumed = _result(_run_flow(script, out, port, env))
    assert resumed["skipped"] == ["ingest", "eval-index"]
    assert (out / "ingest" / "ingest.json").stat().st_mtime_ns == ingest_mtime
    assert resumed["curation"] == reference["curation"]
    assert _fingerprint(out / "curated", skip="corpus.json") == _fingerprint(tmp_path / "reference" / "curated",
                                                                            skip="corpus.json")
    # the manifests are equal but for the run folder's own path (input, eval index location)
    ours = (out / "curated" / "corpus.json").read_text().replace(str(out), "RUN")
    theirs = (tmp_path / "reference" / "curated" / "corpus.json").read_text().replace(str(tmp_path / "reference"), "RUN")
    assert ours == theirs


def test_second_server_in_the_same_state_folder_is_refused(stack):
    twin = LocalPrefect(state_dir=stack.state_dir, home=stack.home, port=free_port())
    with pytest.raises(StackError, match="already running"):
        twin.start_server()


def test_port_in_use_is_reported(stack, tmp_path):
    other = LocalPrefect(state_dir=tmp_path / "run", home=tmp_path / "home", port=stack.port)
    with pytest.raises(StackError, match=f"port {stack.port}.*in use"):
        other.start_server()
