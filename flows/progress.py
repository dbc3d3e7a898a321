"""Progress a person can watch: a Prefect progress artifact per flow run, advanced per stage."""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class FlowProgress:
    def __init__(self, stages: list[str], key: str):
        self.stages, self.done = stages, 0
        self.artifact = create_progress_artifact(progress=0.0, key=key,
                                                 description="stages: " + " → ".join(stages))

    def advance(self, stage: str) -> None:
        self.done += 1
        update_progress_artifact(self.artifact, progress=100.0 * self.done / len(self.stages),
                                 description=f"{stage} done ({self.done}/{len(self.stages)})")
