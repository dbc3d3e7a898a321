"""Zero-shot evaluation of a trained run on the registered eval sets (``litflow evaluate``).

Stable entry points (the orchestration calls these):

* :func:`evaluate_run` — load the model of a training run folder, evaluate it on registry sets
  (:mod:`dedup.evalsets`; default all), write ``OUT/metrics.json`` + ``OUT/summary.md``, return
  the metrics;
* :func:`headline` — the one number (higher is better) that decides whether a new model may
  replace the published one.

Classification sets: zero-shot top-1/top-5 with prompt ensembles (:mod:`training.zeroshot`),
one result per prompt set (each prompt set has a language: per-language classification).
Retrieval sets: R@1/5/10 both ways (:mod:`training.retrieval`), overall and per caption
language. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path

import torch

from dedup import evalsets
from infra.contract import METRICS_FORMAT, EvalMetrics
from infra.files import write_text_atomic
from training import retrieval, zeroshot
from training.eval_data import image_features
from training.eval_model import EvalModel, load_run
from training.eval_report import summary_markdown
from training.prompts import get_prompt_set

HEADLINE_RULE = ("mean zero-shot top-1 over the classification sets with each set's primary prompt set; "
                 "when no classification set was evaluated, the mean over retrieval sets of "
                 "(image->text R@1 + text->image R@1) / 2")


def _set_images(model: EvalModel, evalset, split: str, items, cache_dir) -> tuple[torch.Tensor, dict]:
    where = f"eval set '{evalset.name}' split '{split}'"
    fingerprint = f"{model.image_fingerprint}"
    features, info = image_features(items, where, model.preprocess, fingerprint, model.image_features, cache_dir)
    return model.embed_features(features), info


def evaluate_classification(model: EvalModel, evalset, split: str, items, images: torch.Tensor,
                            prompt_sets: list[str]) -> dict:
    space = evalset.classes(split, items)
    index = {label: i for i, label in enumerate(space.labels)}
    labels = torch.tensor([index[item.label] for item in items])
    results = {}
    for spec in prompt_sets:
        prompts = get_prompt_set(spec)
        per_class = [prompts.prompts(label, name) for label, name in zip(space.labels, space.display)]
        vectors = zeroshot.class_embeddings(per_class, model.encode_texts)
        names = [prompts.classnames.get(label, name) for label, name in zip(space.labels, space.display)]
        result = zeroshot.classify(images, vectors, labels, names)
        result.update(prompt_set=prompts.name, lang=prompts.lang, templates=len(prompts.templates))
        results[prompts.name] = result
    by_lang: dict[str, float] = {}
    for result in results.values():  # a language's number is its first prompt set's (no picking the best)
        by_lang.setdefault(result["lang"], result["top1"])
    return {"task": "classification", "labels": list(space.labels), "label_names": list(space.display),
            "label_source": space.source, "primary": get_prompt_set(prompt_sets[0]).name, "by_prompt_set": results,
            "top1_by_language": dict(sorted(by_lang.items()))}


def evaluate_retrieval(model: EvalModel, items, images: torch.Tensor, where: str) -> dict:
    texts, owner, langs = [], [], []
    for index, item in enumerate(items):
        for caption in item.texts():
            texts.append(caption.text)
            owner.append(index)
            langs.append(caption.lang)
    if not texts:
        raise evalsets.MalformedEvalSet(f"{where}: a retrieval set without captions")
    without = [item.key for item in items if not item.texts()]
    text_embeddings = model.encode_texts(texts)
    owner_t = torch.tensor(owner)
    result = {"task": "retrieval", "all": retrieval.recall(images, text_embeddings, owner_t),
              "images_without_caption": len(without)}
    if any(lang is not None for lang in langs):
        result["by_language"] = retrieval.recall_by_language(images, text_embeddings, owner_t, langs)
    return result


def subsample(items: list, limit: int | None) -> list:
    """At most ``limit`` items, chosen by a hash of the key (stable when items are added), in set order."""
    if limit is None or len(items) <= limit:
        return items
    rank = sorted(range(len(items)), key=lambda i: hashlib.sha256(items[i].key.encode()).hexdigest())
    keep = set(rank[:limit])
    return [item for i, item in enumerate(items) if i in keep]


def evaluate_model(model: EvalModel, eval_sets: list[str] | None = None, split: str = "test",
                   cache_dir: str | Path | None = None, prompts: dict[str, list[str]] | None = None,
                   log=lambda message: None, limit: int | None = None, evalset_files: list | tuple = ()) -> dict:
    """Every number for ``model`` on the named sets (default: every set of ``evalset_files``, or
    every registered set when no file is given; :func:`dedup.evalsets.select`).

    ``limit`` evaluates at most that many images per set (a key-hash subsample, recorded), for
    budgets where the whole split costs too much; None (default) evaluates everything.
    """
    chosen_sets = evalsets.select(list(eval_sets) if eval_sets else None, evalset_files)
    started = time.time()
    sets = {}
    for evalset in chosen_sets:
        name = evalset.name
        all_items = evalset.items(split)
        items = subsample(all_items, limit)
        where = f"eval set {name!r} split {split!r}"
        if evalset.task == "classification":
            evalset.classes(split, items)  # malformed label spaces fail before any image is embedded
        t0 = time.time()
        images, image_info = _set_images(model, evalset, split, items, cache_dir)
        if evalset.task == "classification":
            chosen = (prompts or {}).get(name) or list(evalset.prompts)
            result = evaluate_classification(model, evalset, split, items, images, chosen)
        else:
            result = evaluate_retrieval(model, items, images, where)
        result.update(description=evalset.description, source=evalset.split(split).source.describe(),
                      split=split, images=len(items), split_images=len(all_items), limit=limit, images_digest=image_info["digest"],
                      feature_cache=image_info["cache"], features_from_cache=image_info["cached"],
                      seconds=round(time.time() - t0, 2))
        sets[name] = result
        log(f"{name}: {_short(result)}")
    metrics = {"format": METRICS_FORMAT, "model": model.info, "split": split, "sets": sets,
               "evalset_files": [str(Path(f).resolve()) for f in evalset_files],
               "headline": None, "headline_rule": HEADLINE_RULE,
               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                               "threads": torch.get_num_threads()},
               "seconds": round(time.time() - started, 2)}
    metrics["headline"] = headline(metrics)
    return metrics


def _short(result: dict) -> str:
    if result["task"] == "classification":
        primary = result["by_prompt_set"][result["primary"]]
        return f"top1 {primary['top1']:.3f} ({result['primary']})"
    r = result["all"]
    return f"i2t R@1 {r['image_to_text']['R@1']:.3f}, t2i R@1 {r['text_to_image']['R@1']:.3f}"


def headline(metrics: dict) -> float:
    """Higher is better: mean zero-shot top-1 over classification sets (primary prompt set).

    Without classification sets: mean over retrieval sets of (i2t R@1 + t2i R@1) / 2. Raises
    when the metrics hold neither (there is nothing to compare a model on).
    """
    sets = metrics.get("sets", {})
    top1 = [s["by_prompt_set"][s["primary"]]["top1"] for s in sets.values() if s.get("task") == "classification"]
    if top1:
        return float(sum(top1) / len(top1))
    r1 = [(s["all"]["image_to_text"]["R@1"] + s["all"]["text_to_image"]["R@1"]) / 2
          for s in sets.values() if s.get("task") == "retrieval"]
    if r1:
        return float(sum(r1) / len(r1))
    raise ValueError("metrics hold no classification or retrieval result: no headline")


def write_outputs(metrics: dict, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the contract's model is built here, where the file is written: a missing or misspelt field fails
    for name, text in ((EvalMetrics.FILE, EvalMetrics.parse(metrics).to_json()),
                       ("summary.md", summary_markdown(metrics))):
        write_text_atomic(out / name, text)
    return metrics


def evaluate_run(run_dir: str | Path, eval_sets: list[str] | None, out_dir: str | Path,
                 cache_dir: str | Path | None = None, split: str = "test", limit: int | None = None,
                 evalset_files: list | tuple = ()) -> dict:
    """Evaluate the model of training run ``run_dir`` on eval sets; write OUT/metrics.json + summary.md.

    ``limit``: at most that many images per set (key-hash subsample, recorded); None = all."""
    model = load_run(run_dir)
    metrics = evaluate_model(model, eval_sets, split, cache_dir, limit=limit, evalset_files=evalset_files)
    return write_outputs(metrics, out_dir)
