"""Prefect flow ``retrain-lit``: embed the newest corpus once (locked tower) → flag eval
duplicates from those embeddings (verified; ``eval_flags.parquet``) → train the text tower,
skipping the flagged pairs → evaluate zero-shot → publish as ``latest`` only when not worse
(history kept).

Orchestration only: ``training`` holds the logic. The training run's folder is named after
the corpus it reads and the training config, so a re-run of the same job resumes (or finds
finished) the same run instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from infra.contract import CorpusManifest
from infra.paths import PROJECT_ROOT, default_work_dir
from flows.progress import FlowProgress


def newest_corpus(work_dir: Path) -> Path:
    """The most recently completed curated corpus under ``work_dir`` (by its corpus.json)."""
    manifests = sorted(work_dir.glob("**/curated/corpus.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise FileNotFoundError(f"no curated corpus (curated/corpus.json) under {work_dir}: run build-corpus first")
    return manifests[-1].parent


def _corpus_digest(corpus: Path) -> str:
    shards = CorpusManifest.read(corpus).shards
    return hashlib.sha256(json.dumps([s.sha256 for s in shards]).encode()).hexdigest()


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(corpus: str, cache: str, image_tower: str, fit: dict | None = None) -> dict:
    from training.embed_cache import embed_shards
    from training.image_towers import build_image_tower
    from training.shard_inputs import resolve_shards

    # resumable per shard by itself: done shards are skipped, a changed shard is an error
    report = embed_shards(build_image_tower(image_tower, **(fit or {})), resolve_shards([corpus]), cache)
    return {k: report[k] for k in ("dir", "embedded", "skipped", "images")}


def corpus_eval_index(corpus: Path) -> Path | None:
    """The eval index the corpus was curated against (from corpus.json), if it still exists."""
    recorded = CorpusManifest.read(corpus).config.get("eval_dedup", {})
    index = recorded.get("index")
    return Path(index) if index and (Path(index) / "index.json").exists() else None


@task(name="eval-flags", cache_policy=NO_CACHE)
def flag_task(corpus: str, cache: str, index: str, out: str, image_tower: str, fit: dict | None = None) -> dict:
    from training.eval_flags import flag_corpus

    fit = fit or {}
    result = flag_corpus(corpus, cache, index, out, image_tower=image_tower, image_fit=fit.get("fit", "crop"),
                         image_fill=fit.get("fill", (255, 255, 255)))
    get_run_logger().info("embedding check: %s candidates, %s flagged as eval duplicates (%s)",
                          result["candidates"], result["flagged"], result["flags"])
    return result


@task(name="train", cache_policy=NO_CACHE)
def train_task(config_fields: dict, launcher: dict) -> dict:
    from training.train import TrainConfig, train

    logger = get_run_logger()
    if launcher.get("nnodes", 1) > 1 or launcher.get("nproc", 1) > 1:
        return _torchrun(config_fields, launcher)
    steps = config_fields["steps"]
    artifact = create_progress_artifact(progress=0.0, key="retrain-lit-training", description=f"training, {steps} steps")

    def on_step(step: int, metrics: dict) -> None:
        if step % max(1, steps // 20) == 0 or step == steps:
            update_progress_artifact(artifact, progress=100.0 * step / steps,
                                     description=f"step {step}/{steps}, loss {metrics.get('loss', float('nan')):.4f}")

    result = train(TrainConfig(**config_fields), on_step=on_step)
    logger.info("trained %s to step %s", config_fields["out"], result.get("step"))
    return result


def _torchrun(config_fields: dict, launcher: dict) -> dict:
    """This host's node of a torchrun job (other hosts run infra/torchrun/launch.sh themselves)."""
    # the whole config as a run file: every rank builds exactly what a single process would
    run_file = Path(config_fields["out"]) / "run-request.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(config_fields, indent=2, sort_keys=True) + "\n")
    args = ["train", "--config", str(run_file)]
    env = {"NNODES": str(launcher.get("nnodes", 1)), "NPROC": str(launcher.get("nproc", 1)),
           "RDZV_ENDPOINT": launcher.get("rdzv_endpoint") or "127.0.0.1:29400",
           "JOB_ID": launcher.get("job_id") or "litflow-retrain"}
    done = subprocess.run(["bash", str(PROJECT_ROOT / "infra" / "torchrun" / "launch.sh"), *args],
                          env={**os.environ, **env, "PYTHON": sys.executable}, cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun training failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"out": config_fields["out"], "launcher": env}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run_dir: str, eval_sets: list[str] | None, out_dir: str, cache: str | None,
                  limit: int | None, evalset_files: list[str]) -> dict:
    from training.evaluate import evaluate_run

    return evaluate_run(run_dir, eval_sets, out_dir, cache_dir=cache, limit=limit, evalset_files=evalset_files)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(models: str, run_dir: str, metrics: dict, eval_sets: list[str] | None, cache: str | None,
                 limit: int | None, evalset_files: list[str]) -> dict:
    from training.evaluate import evaluate_run, headline
    from training.publish import publish_if_not_worse

    def evaluate_latest(latest_run: str) -> dict:
        return evaluate_run(latest_run, eval_sets, Path(run_dir) / "eval-of-latest", cache_dir=cache, limit=limit,
                            evalset_files=evalset_files)

    return publish_if_not_worse(models, run_dir, metrics, headline, evaluate_latest)


NIGHTLY_RUN = Path(__file__).with_name("nightly_run.toml")  # the nightly's training defaults


@flow(name="retrain-lit", log_prints=True)
def retrain_lit(
    corpus: str | None = None,
    models: str | None = None,
    run_file: str | None = None,
    train_set: list[str] | None = None,
    mode: str | None = None,
    image_tower: str | None = None,
    text_tower: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    eval_sets: list[str] | None = None,
    evalset_files: list[str] | None = None,
    eval_limit: int | None = None,
    nnodes: int = 1,
    nproc: int = 1,
    rdzv_endpoint: str | None = None,
    eval_check: bool = True,
) -> dict:
    """Retrain on the newest curated corpus (or ``corpus``) and publish when not worse.

    The training run is ``run_file`` (default ``flows/nightly_run.toml``), then the parameters
    given here (``text_tower`` is ``text.name``), then ``train_set`` (``KEY=VALUE`` as
    ``litflow train --set``); shards, out, cache and exclude come from the corpus.
    ``eval_check``: run the embedding check (a locked image tower, when the corpus records an eval index)
    and train without the pairs it flags. It embeds every eval image once per tower and index.
    """
    from training.config import load_train_config

    corpus_dir = Path(corpus) if corpus else newest_corpus(default_work_dir())
    shard_dir = corpus_dir / "shards" if (corpus_dir / "shards").is_dir() else corpus_dir
    models_dir = Path(models) if models else default_work_dir() / "models"
    cache = str(models_dir / "embeddings")
    given = {k: v for k, v in {"mode": mode, "image_tower": image_tower, "steps": steps, "batch_size": batch_size,
                               "lr": lr, "warmup": warmup}.items() if v is not None}
    if text_tower is not None:
        given["text"] = {"name": text_tower}
    run_file = run_file or str(NIGHTLY_RUN)
    overrides = list(train_set or [])
    planned = load_train_config(run_file, {**given, "shards": [str(shard_dir)], "out": str(models_dir), "cache": cache},
                                overrides)
    mode, image_tower = planned.mode, planned.image_tower
    fit = {"fit": planned.image_fit, "fill": planned.image_fill}  # the cache and the eval images as training sees them
    progress = FlowProgress(["embed", "eval-flags", "train", "evaluate", "publish"], key="retrain-lit-progress")
    if planned.image_locked:
        embed_task(str(shard_dir), cache, image_tower, fit)
    progress.advance("embed")
    exclude, flags = [], None
    index = corpus_eval_index(corpus_dir)
    if planned.image_locked and eval_check and index is not None:
        fitted = "" if planned.image_fit == "crop" else f"-pad{''.join(f'{c:02x}' for c in planned.image_fill)}"
        flags_dir = models_dir / "eval-flags" / (f"{image_tower.replace(':', '_').replace('/', '_')}{fitted}-"
                                                 f"{_corpus_digest(corpus_dir)[:12]}")
        flags = flag_task(str(corpus_dir), cache, str(index), str(flags_dir), image_tower, fit)
        exclude = [flags["flags"]]
    progress.advance("eval-flags")

    fields = planned.model_dump(mode="json", exclude={"out"}) | {
        "cache": cache if planned.image_locked else None, "warmup": min(planned.warmup, planned.steps)}
    if exclude:
        fields["exclude"] = exclude
    run_id = hashlib.sha256(json.dumps([_corpus_digest(corpus_dir), fields], sort_keys=True).encode()).hexdigest()[:12]
    run_dir = models_dir / "runs" / f"{mode}-{run_id}"
    train_task(fields | {"out": str(run_dir)}, {"nnodes": nnodes, "nproc": nproc, "rdzv_endpoint": rdzv_endpoint})
    progress.advance("train")
    metrics = evaluate_task(str(run_dir), eval_sets, str(run_dir / "eval"), cache, eval_limit, list(evalset_files or []))
    progress.advance("evaluate")
    decision = publish_task(str(models_dir), str(run_dir), metrics, eval_sets, cache, eval_limit,
                            list(evalset_files or []))
    progress.advance("publish")
    summary = (run_dir / "eval" / "summary.md")
    create_markdown_artifact(
        markdown=(summary.read_text() if summary.exists() else "") +
        f"\n\n## Publish\n\n{'published as latest' if decision['published'] else 'not published'}: {decision['reason']}\n"
        + _eval_check_markdown(shard_dir, flags),
        key="retrain-lit-summary", description="evaluation, publish decision, eval de-dup")
    get_run_logger().info("run %s: %s", run_dir, decision["reason"])
    return {"run": str(run_dir), "metrics": str(run_dir / "eval" / "metrics.json"), "decision": decision,
            "corpus": str(corpus_dir), "eval_candidates": flags["candidates_file"] if flags else None}


def _eval_check_markdown(shard_dir: Path, flags: dict | None) -> str:
    """What the embedding check skipped, and the audit that shows it beside curation's removals."""
    if flags is None:
        return "\n\n## Eval de-dup (embedding check)\n\nnot run: no locked image tower, no eval index, or eval_check off\n"
    command = (f"prefect deployment run 'dedup-report/audit' -p corpus={shard_dir} "
               f"-p embedding_candidates={flags['candidates_file']}")
    return (f"\n\n## Eval de-dup (embedding check)\n\n{flags['flagged']} of {flags['candidates']} candidate pairs "
            f"flagged and left out of training: `{flags['flags']}`. To see them in the audit report with "
            f"curation's removals:\n\n```\n{command}\n```\n")
