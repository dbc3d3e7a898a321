"""Markdown summaries of stage reports, for Prefect artifacts (pure functions, no Prefect)."""

from __future__ import annotations


def _table(header: tuple[str, str], rows: dict) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def ingest_markdown(report: dict) -> str:
    return (
        f"## Ingestion\n\nrows in: **{report['rows_in']}**, downloaded: **{report['downloaded']}**, "
        f"failed: **{sum(report['failed'].values())}**\n\n{_table(('reason', 'rows'), report['failed'])}\n\n"
        f"output: `{report['output']}`\n" + _retries_markdown(report.get("retries")) + _hosts_markdown(report.get("hosts"))
    )


def _retries_markdown(retries: list | None) -> str:
    if not retries:
        return ""
    lines = ["", "### Retry rounds (rows whose failure was transient)", "",
             "| round | rows tried | recovered | failed again |", "|---|---|---|---|"]
    for r in retries:
        again = ", ".join(f"{k} {v}" for k, v in r["failed_again"].items()) or "-"
        lines.append(f"| {r['round']} | {r['rows']} | {r['recovered']} | {again} |")
    return "\n".join(lines) + "\n"


def _hosts_markdown(hosts: dict | None, n: int = 10) -> str:
    if not hosts or not hosts["top_by_failures"]:
        return ""
    lines = ["", f"### Hosts with the most failures (top {n})", "", "| host | rows | downloaded | failed by reason |",
             "|---|---|---|---|"]
    for h in hosts["top_by_failures"][:n]:
        reasons = ", ".join(f"{r} {c}" for r, c in sorted(h["failed"].items(), key=lambda rc: -rc[1]))
        lines.append(f"| {h['host']} | {h['rows']} | {h['downloaded']} | {reasons} |")
    if not hosts["exact"]:
        lines.append(f"\n(counted {hosts['hosts_counted']} hosts at most at once: counts are lower bounds)")
    return "\n".join(lines) + "\n"


def corpus_markdown(manifest: dict, report: dict | None = None) -> str:
    stages = {name: f"{s['in']} → {s['out']}" for name, s in manifest["stages"].items()}
    langs = dict(sorted(manifest["languages"]["kept"].items(), key=lambda kv: -kv[1])[:15])
    text = (
        f"## Curation ({manifest['preset']})\n\n{manifest['accounting']}\n\n"
        f"{_table(('stage', 'in → out'), stages)}\n\n{_table(('reason', 'rejected'), manifest['rejected'])}\n\n"
        f"### Languages (kept, top 15)\n\n{_table(('language', 'pairs'), langs)}\n\n"
        f"### Eval duplicates removed\n\n"
        + (_table(("eval set / split", "pairs"), {f"{s}/{sp}": n for s, splits in manifest["eval_duplicates"].items()
                                                   for sp, n in splits.items()}) if manifest["eval_duplicates"] else "none")
        + "\n"
    )
    if report:
        text += f"\n### Audit report\n\n```\n{_short(report)}\n```\n"
    return text


def _short(report: dict) -> str:
    import json

    keep = {k: report[k] for k in report if k in ("radius", "mode", "corpus", "eval_sets", "corpus_duplicates")}
    return json.dumps(keep or report, indent=1, default=str)[:3000]
