"""The audit page: one self-contained HTML file (no network), thumbnails as data URIs.

Hand-written HTML rather than a templating library: the page is one table and a summary, and
keeping it dependency-free means the report opens anywhere, including air-gapped review boxes.
Paging is a few lines of inline JavaScript over rows that are all in the file, so the page
still shows everything (page 1) with scripts off... and a reviewer can search it with Ctrl-F.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

from dedup.phash import flatten_on_white

THUMB = 112


def thumbnail_data_uri(data: bytes | None, size: int = THUMB) -> str:
    """A small JPEG of the image as a data: URI ('' when the bytes do not decode)."""
    if not data:
        return ""
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (size, size))
        image = flatten_on_white(image).convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    except Exception:  # noqa: BLE001 - an undecodable thumbnail is shown as missing, not fatal
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle;text-align:left}
th{background:#f3f3f3}
tr.match td.img{width:120px;text-align:center}
tr.match img{max-width:112px;max-height:112px}
.cap{max-width:22em;font-size:13px}
.dist{font-weight:bold;font-size:18px;text-align:center}
#pager button{margin:0 .3em}
.muted{color:#777}
"""

_SCRIPT = """
(function(){
  var rows=Array.prototype.slice.call(document.querySelectorAll('tr.match'));
  var size=parseInt(document.body.dataset.pageSize,10), pages=Math.max(1,Math.ceil(rows.length/size));
  var page=0, label=document.getElementById('page-label');
  function show(p){
    page=Math.min(Math.max(p,0),pages-1);
    rows.forEach(function(r,i){var on=i>=page*size&&i<(page+1)*size; r.style.display=on?'':'none'; r.dataset.visible=on?'1':'0';});
    label.textContent='page '+(page+1)+' of '+pages;
    document.body.dataset.page=String(page+1);
  }
  document.getElementById('prev').onclick=function(){show(page-1)};
  document.getElementById('next').onclick=function(){show(page+1)};
  show(0);
  document.body.dataset.ready='1';
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _removed_cell(row: dict) -> str:
    if row["removed"]:
        return "yes"
    return "no" if row.get("flagged", True) else "no <span class='muted'>(candidate, not confirmed)</span>"


def render(summary: dict, rows: list[dict], page_size: int = 50) -> str:
    """``rows``: dicts with distance, signal, eval_set, split, corpus/eval key, captions, thumbs."""
    head = [f"<h1>De-duplication audit</h1><p>Radius <b>{_e(summary['radius'])}</b> bits, mode "
            f"<b>{_e(summary['mode'])}</b>, hash <code>{_e(summary['settings_id'])}</code>; corpus "
            f"<b>{_e(summary['corpus']['pairs'])}</b> pairs. <span id='match-count'>{len(rows)}</span> matches, "
            f"<span id='removed-count'>{summary['corpus']['removed']}</span> corpus pairs removed.</p>"]
    head.append("<h2>Per eval set</h2><table id='summary'><tr><th>eval set</th><th>split</th><th>role</th>"
                "<th>eval images</th><th>unreadable</th><th>corpus pairs matched</th><th>removed</th></tr>")
    for set_name, splits in summary["eval_sets"].items():
        for split, info in splits.items():
            head.append(f"<tr class='summary-row'><td>{_e(set_name)}</td><td>{_e(split)}</td><td>{_e(info['role'])}</td>"
                        f"<td>{info['eval_images']}</td><td>{info['unreadable']}</td>"
                        f"<td>{info['corpus_pairs_matched']}</td><td>{info['removed']}</td></tr>")
    head.append("</table>")
    intra = summary.get("corpus_duplicates")
    if intra:
        head.append(f"<p>Inside the corpus: {intra['exact_groups']} exact and {intra['near_groups']} near "
                    f"duplicate groups ({intra['pairs_in_groups']} pairs, radius {intra['radius']}).</p>")
    body = ["<h2>Matches (nearest first)</h2>",
            "<div id='pager'><button id='prev'>&larr; previous</button><span id='page-label'></span>"
            "<button id='next'>next &rarr;</button></div>",
            "<table id='matches'><tr><th>#</th><th>distance</th><th>corpus image</th><th>corpus caption</th>"
            "<th>eval image</th><th>eval set / split / key</th><th>signals</th><th>removed</th></tr>"]
    for number, row in enumerate(rows, 1):
        corpus_img = f"<img alt='corpus' src='{row['corpus_thumb']}'>" if row.get("corpus_thumb") else "<span class='muted'>n/a</span>"
        eval_img = f"<img alt='eval' src='{row['eval_thumb']}'>" if row.get("eval_thumb") else "<span class='muted'>n/a</span>"
        body.append(
            f"<tr class='match' data-distance='{_e(row['distance'])}' data-flagged='{int(row.get('flagged', True))}'><td>{number}</td><td class='dist'>{_e(row['distance'])}</td>"
            f"<td class='img'>{corpus_img}</td><td class='cap'>{_e(row.get('corpus_caption'))}"
            f"<div class='muted'>{_e(row['key'])}</div></td>"
            f"<td class='img'>{eval_img}</td><td class='cap'>{_e(row['eval_set'])} / {_e(row['eval_split'])} / "
            f"{_e(row['eval_key'])}<div class='muted'>{_e(row.get('eval_label') or '')} {_e(row.get('eval_caption') or '')}</div></td>"
            f"<td>{_e(row['signals'])}</td><td>{_removed_cell(row)}</td></tr>")
    body.append("</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>litflow de-duplication audit</title>"
            f"<style>{_STYLE}</style></head><body data-page-size='{int(page_size)}'>"
            + "".join(head) + "".join(body) + f"<script>{_SCRIPT}</script></body></html>")
