"""``ingest.html``: the ingestion report as a page a person reads, offline, next to ``ingest.json``.

Why rows failed, where (the hosts with the most failures, as img2dataset users ask in its
#430/#439), what retry rounds recovered, and per part. One self-contained file: no script, no
style sheet or font from anywhere, no link that fetches. Built from the report dict alone.
Memory: the report (its host table is bounded by :mod:`curation.host_report`).
"""

from __future__ import annotations

import html

STYLE = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
         ".n{text-align:right}.muted{color:#777}")


def _e(value) -> str:
    return html.escape(str(value))


def _table(table_id: str, header: tuple[str, ...], rows: list[tuple]) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr class='row'>" + "".join(
        f"<td class='n'>{_e(c)}</td>" if isinstance(c, (int, float)) else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table id='{table_id}'><tr>{head}</tr>{body}</table>"


def _reasons(failed: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items(), key=lambda kv: -kv[1])) or "-"


def render_ingest_page(report: dict) -> str:
    failed = sum(report["failed"].values())
    share = report["downloaded"] / report["rows_in"] if report["rows_in"] else 0.0
    hosts = report.get("hosts") or {}
    host_rows = [(h["host"], h["rows"], h["downloaded"], sum(h["failed"].values()), _reasons(h["failed"]))
                 for h in hosts.get("top_by_failures", [])]
    retry_rows = [(r["round"], r["rows"], r["recovered"], _reasons(r["failed_again"])) for r in report.get("retries", [])]
    part_rows = [(p["part"], p["file"], p["rows_in"], p["downloaded"], _reasons(p["failed"])) for p in report["parts"]]
    lower_bound = "" if hosts.get("exact", True) else (
        f"<p class='muted'>{_e(hosts.get('hosts_counted'))} hosts counted at most at once: the counts are lower "
        "bounds.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>litflow ingestion report</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>Ingestion report</h1>"
        f"<p>rows in <b id='rows-in'>{report['rows_in']}</b>, downloaded <b id='downloaded'>{report['downloaded']}</b> "
        f"({share:.1%}), failed <b id='failed'>{failed}</b>. Every row is either downloaded or failed with one "
        "reason; a retried row counts by its latest attempt.</p>"
        f"<p class='muted'>output {_e(report['output'])}; img2dataset {report.get('img2dataset_s', 0):.1f} s</p>"
        "<h2>Failures by reason</h2>"
        + _table("reasons", ("reason", "rows"), sorted(report["failed"].items(), key=lambda kv: -kv[1]))
        + "<h2>Hosts with the most failures</h2>" + _table("hosts", ("host", "rows", "downloaded", "failed", "by reason"),
                                                          host_rows) + lower_bound
        + "<h2>Retry rounds</h2>" + _table("retries", ("round", "rows tried", "recovered", "failed again"), retry_rows)
        + "<h2>Parts</h2>" + _table("parts", ("part", "file", "rows in", "downloaded", "failed by reason"), part_rows)
        + "</body></html>\n"
    )
