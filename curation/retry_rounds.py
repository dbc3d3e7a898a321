"""``litflow ingest --retry-failed``: download again only the rows whose failure was transient.

A *round* takes the rows whose latest outcome has a transient reason (timeout, connection
error, 5xx, 429, deadline, DNS, a shard that never completed) and runs img2dataset on just them,
its shards numbered after every earlier shard (``GuardedDownloader.shard_offset``), so their
keys never collide with the first pass's. The round is downloaded into ``retries/RRR/shards``
and its finished files are then moved beside the others in ``shards/``; ``retries/RRR.json``
marks it complete. A round that was cut off (no marker) is removed, its moved files included,
and can be run again.

Accounting: every input row is counted once, by its *latest* attempt. A row a round retried is
skipped in the first pass's (and earlier rounds') accounting and counted by the last round
that tried it; ``ingest.json["retries"]`` says per round how many rows it tried, how many it
recovered and why the rest failed again.

The retry list of a round is written one file per URL-list part (``retries/RRR/list/PPPPP.parquet``),
like the vetted chunks, so no step gathers the failures of the whole list. Memory: per part, the
set of row numbers retried (at most the part's rows).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from curation.reasons import TRANSIENT_REASONS, classify_error
from infra.contract import IngestReason
from infra.files import write_json_atomic

ROUNDS_DIR = "retries"
OUTCOME_COLUMNS = ["row", "url", "status", "error_message"]  # what accounting reads of img2dataset's shard parquet


def shards_of(rows: int, samples_per_shard: int) -> int:
    return -(-rows // samples_per_shard)


@dataclass(frozen=True)
class Round:
    number: int
    offset: int                   # its first shard number
    files: tuple[tuple[int, int], ...]  # (part, rows) of each list file, in part order
    samples_per_shard: int

    @property
    def name(self) -> str:
        return f"{self.number:03d}"

    def folder(self, out_dir: Path) -> Path:
        return out_dir / ROUNDS_DIR / self.name

    def shard_count(self) -> int:
        return sum(shards_of(rows, self.samples_per_shard) for _, rows in self.files)

    def first_shard_of(self, part: int) -> int | None:
        """The shard number where this part's retried rows start, or None when it has none."""
        first = self.offset
        for number, rows in self.files:
            if number == part:
                return first
            first += shards_of(rows, self.samples_per_shard)
        return None

    def rows_of(self, out_dir: Path, part: int) -> pd.DataFrame:
        """The part's retried rows (row, url) in the order img2dataset was given them."""
        if self.first_shard_of(part) is None:
            return pd.DataFrame({"row": pd.Series(dtype="int64"), "url": pd.Series(dtype=object)})
        return pq.read_table(self.folder(out_dir) / "list" / f"{part:05d}.parquet", columns=["row", "url"]).to_pandas()

    def to_dict(self) -> dict:
        return {"round": self.number, "offset": self.offset, "samples_per_shard": self.samples_per_shard,
                "files": [{"part": p, "rows": n} for p, n in self.files]}

    @classmethod
    def from_dict(cls, value: dict) -> "Round":
        return cls(value["round"], value["offset"], tuple((f["part"], f["rows"]) for f in value["files"]),
                   value["samples_per_shard"])


def completed_rounds(out_dir: Path) -> list[Round]:
    """The rounds marked complete, in order; a round cut off before its marker is removed."""
    root = out_dir / ROUNDS_DIR
    if not root.is_dir():
        return []
    rounds = [Round.from_dict(json.loads(p.read_text())) for p in sorted(root.glob("[0-9][0-9][0-9].json"))]
    done = {r.name for r in rounds}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in done):
        plan = folder / "plan.json"
        if plan.exists():  # files it had moved already go too: the round is run again whole
            cut = Round.from_dict(json.loads(plan.read_text()))
            for shard in range(cut.offset, cut.offset + cut.shard_count()):
                for path in (out_dir / "shards").glob(f"{shard:05d}[._]*"):
                    path.unlink()
        shutil.rmtree(folder)
    return rounds


def plan_round(out_dir: Path, reports: list[dict], rounds: list[Round], first_pass_shards: int,
               samples_per_shard: int, chunk_name) -> Round | None:
    """Write the next round's retry list from ``rejected.parquet`` (the latest outcomes): per
    part, the vetted rows whose reason is transient. None when there is nothing to retry."""
    number = (rounds[-1].number + 1) if rounds else 1
    offset = first_pass_shards + sum(r.shard_count() for r in rounds)
    folder = out_dir / ROUNDS_DIR / f"{number:03d}"
    transient = sorted(r.value for r in TRANSIENT_REASONS)
    files = []
    for report in reports:
        part = report["part"]
        failed = pq.read_table(out_dir / "rejected.parquet", columns=["row"],
                               filters=[("part", "=", part), ("reason", "in", transient)]).to_pandas()
        if failed.empty:
            continue
        wanted = set(failed["row"])
        chunks = [pq.read_table(out_dir / "vetted" / chunk_name(part, c)).to_pandas()
                  for c in range(len(report["chunks"]))]
        rows = pd.concat(chunks, ignore_index=True)
        rows = rows[rows["row"].isin(wanted)].sort_values("row")
        (folder / "list").mkdir(parents=True, exist_ok=True)
        rows.to_parquet(folder / "list" / f"{part:05d}.parquet", index=False)
        files.append((part, len(rows)))
    if not files:
        return None
    planned = Round(number, offset, tuple(files), samples_per_shard)
    write_json_atomic(folder / "plan.json", planned.to_dict())
    return planned


def finish_round(out_dir: Path, planned: Round) -> None:
    """Move the round's finished shard files beside the others, then mark it complete."""
    folder = planned.folder(out_dir)
    for path in sorted((folder / "shards").iterdir()):
        if path.is_file() and path.name[:5].isdigit():
            path.rename(out_dir / "shards" / path.name)
    write_json_atomic(out_dir / ROUNDS_DIR / f"{planned.name}.json", planned.to_dict())


def settle(outcomes: pd.DataFrame, hosts=None) -> tuple[int, pd.DataFrame]:
    """One shard's outcome rows as (downloaded, failures with row/url/detail/reason); the
    successes are tallied by host. The first pass and every round account through here."""
    ok = outcomes["status"] == "success"
    if hosts is not None:
        for url in outcomes.loc[ok, "url"]:
            hosts.add(url, None)
    failed = outcomes.loc[~ok, ["row", "url", "error_message"]].rename(columns={"error_message": "detail"})
    failed["reason"] = failed["detail"].map(lambda m: classify_error(m).value)
    return int(ok.sum()), failed


def never_completed(expected: pd.DataFrame) -> pd.DataFrame:
    """The failures of a shard that left no outcome file: each of its rows, as ``shard_failed``."""
    return expected.assign(reason=IngestReason.SHARD_FAILED.value, detail="shard never completed")


def account_round_part(planned: Round, part: int, out_dir: Path, later: set[int], hosts=None,
                       check=None) -> tuple[int, pd.DataFrame, dict]:
    """This round's outcomes for ``part``'s rows that no later round retried.

    Returns (downloaded, failures as row/url/reason/detail, this round's own tally for the
    part: rows tried, recovered, failed by reason). ``check(outcome_file, outcomes, expected)``
    raises when a shard does not hold exactly the rows it was given."""
    sps = planned.samples_per_shard
    tried = planned.rows_of(out_dir, part)
    tally = {"rows": len(tried), "recovered": 0, "failed": {}}
    downloaded, failures = 0, []
    first = planned.first_shard_of(part)
    for k in range(shards_of(len(tried), sps) if first is not None else 0):
        expected = tried.iloc[k * sps:(k + 1) * sps]
        outcome_file = out_dir / "shards" / f"{first + k:05d}.parquet"
        if outcome_file.exists():
            outcomes = pd.read_parquet(outcome_file, columns=OUTCOME_COLUMNS)
            if check is not None:
                check(outcome_file, outcomes, expected)
            recovered, seen = settle(outcomes)  # what this round saw, final or not
            got, failed = settle(outcomes[~outcomes["row"].isin(later)], hosts)
        else:
            recovered, seen = 0, never_completed(expected)
            got, failed = 0, seen[~seen["row"].isin(later)]
        tally["recovered"] += recovered
        for reason, n in seen["reason"].value_counts().items():
            tally["failed"][reason] = tally["failed"].get(reason, 0) + int(n)
        downloaded += got
        failures.append(failed)
    frame = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame(
        {c: [] for c in ("row", "url", "detail", "reason")})
    return downloaded, frame, tally
