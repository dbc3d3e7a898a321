"""The markdown summary of an evaluation's metrics (what a person reads; metrics.json has it all)."""

from __future__ import annotations


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def summary_markdown(metrics: dict) -> str:
    model = metrics["model"]
    image, text = model["image_tower"], model["text_tower"]
    lines = [
        f"# Zero-shot evaluation — {model['mode']} run, step {model['step']}",
        "",
        f"* run: `{model['run_dir']}` (checkpoint sha256 `{model['checkpoint_sha256'][:16]}`)",
        f"* image tower: `{image['name']}` ({'locked' if image['locked'] else 'trained'}, "
        f"fingerprint `{image['weights_fingerprint'][:16]}`)",
        f"* text tower: `{text['name']}` (weights `{text['weights_sha256'][:16]}`)",
        f"* split: `{metrics['split']}`; headline **{_pct(metrics['headline'])}** — {metrics['headline_rule']}",
        "",
    ]
    classification = {n: s for n, s in metrics["sets"].items() if s["task"] == "classification"}
    retrieval = {n: s for n, s in metrics["sets"].items() if s["task"] == "retrieval"}
    if classification:
        lines += ["## Zero-shot classification", "",
                  "| set | prompt set | lang | images | classes | top-1 | top-5 | mean per-class | chance |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, result in classification.items():
            for prompt_name, r in result["by_prompt_set"].items():
                mark = " (primary)" if prompt_name == result["primary"] else ""
                lines.append(f"| {name} | {prompt_name}{mark} | {r['lang']} | {r['images']} | {r['classes']} | "
                             f"{_pct(r['top1'])} | {_pct(r['top5'])} | {_pct(r['mean_per_class_accuracy'])} | "
                             f"{_pct(r['chance_top1'])} |")
        lines.append("")
        for name, result in classification.items():
            primary = result["by_prompt_set"][result["primary"]]
            lines += [f"### {name}: per class ({result['primary']})", "",
                      "| class | images | accuracy | most confused with |", "|---|---|---|---|"]
            for row in primary["per_class"]:
                confused = f"{row['most_confused_with']} ({row['confused_count']})" if row["most_confused_with"] else "–"
                lines.append(f"| {row['class']} | {row['images']} | {_pct(row['accuracy'])} | {confused} |")
            lines.append("")
    if retrieval:
        lines += ["## Retrieval", "",
                  "| set | captions | images | image→text R@1 | R@5 | R@10 | text→image R@1 | R@5 | R@10 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, result in retrieval.items():
            rows = [("all", result["all"])] + sorted(result.get("by_language", {}).items())
            for lang, r in rows:
                i2t, t2i = r["image_to_text"], r["text_to_image"]
                label = name if lang == "all" else f"{name} [{lang}]"
                lines.append(f"| {label} | {r['captions']} | {r['images']} | {_pct(i2t['R@1'])} | {_pct(i2t['R@5'])} | "
                             f"{_pct(i2t['R@10'])} | {_pct(t2i['R@1'])} | {_pct(t2i['R@5'])} | {_pct(t2i['R@10'])} |")
        lines.append("")
    return "\n".join(lines)
