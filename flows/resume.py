"""Resumable stages: a stage is skipped only when its inputs, its config *and its outputs*
are what they were when it last completed.

Why not Prefect's task cache alone: it keys on inputs and keeps the result under
PREFECT_HOME, and it does not notice that a stage's outputs were deleted or edited on disk —
it would hand back a result that points at nothing. So each stage writes, next to its outputs,
a marker (``OUT/.stages/NAME.json``): a fingerprint of its config and of its upstream stages'
output digests, and the sha256 of every file it wrote. A later run reuses the stage only when
the fingerprint matches and every file is still there with the same checksum. Otherwise the
stage runs again; its own resume (img2dataset's finished shards, the embedding cache's done
shards, training's checkpoint) keeps partial work, and determinism makes the result the same.

Plain Python, no Prefect: the flows call it inside their tasks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.files import file_sha256, write_text_atomic

MARKER_DIR = ".stages"




def output_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (temporary and hidden files excluded), by relative path."""
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and not p.name.endswith(".tmp"))
    return {str(p.relative_to(root)): file_sha256(p) for p in files}


def digest_of(checksums: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


def fingerprint(config: dict, upstream: dict[str, str]) -> str:
    payload = json.dumps({"config": config, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Stage:
    run_dir: Path          # the flow's output folder; markers go to run_dir/.stages
    name: str
    output: Path           # the folder this stage writes
    config: dict           # everything that changes the stage's result
    upstream: dict         # {stage name: output digest} of the stages it reads

    @property
    def marker(self) -> Path:
        return self.run_dir / MARKER_DIR / f"{self.name}.json"

    def completed(self) -> dict | None:
        """The recorded result when the stage can be skipped, else None (and why, in ``why``)."""
        self.why = "never completed"
        if not self.marker.exists():
            return None
        record = json.loads(self.marker.read_text())
        if record.get("fingerprint") != fingerprint(self.config, self.upstream):
            self.why = "config or upstream outputs changed"
            return None
        if not self.output.exists() or output_checksums(self.output) != record["checksums"]:
            self.why = "outputs missing or changed on disk"
            return None
        return record["result"] | {"digest": record["digest"], "skipped": True}

    def record(self, result: dict) -> dict:
        checksums = output_checksums(self.output)
        record = {"stage": self.name, "fingerprint": fingerprint(self.config, self.upstream),
                  "digest": digest_of(checksums), "checksums": checksums, "result": result}
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.marker, json.dumps(record, indent=1, sort_keys=True, default=str))
        return result | {"digest": record["digest"], "skipped": False}

    def run(self, work: Callable[[], dict], log: Callable[[str], None] = print) -> dict:
        """Skip when complete and unchanged, else do ``work`` and record its outputs."""
        done = self.completed()
        if done is not None:
            log(f"stage {self.name}: outputs unchanged since it completed, skipped")
            return done
        log(f"stage {self.name}: running ({self.why})")
        self.marker.unlink(missing_ok=True)
        return self.record(work())
