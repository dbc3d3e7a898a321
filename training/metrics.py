"""Training metrics: one JSON line per step (append-only, trimmed on resume), and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from infra.files import replacing


class MetricsLog:
    def __init__(self, path: str | Path, resume_step: int = 0):
        """Open ``path``; rows after ``resume_step`` (written after the checkpoint we resume from) are dropped."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(self.path) if self.path.exists() else []
        kept = [r for r in rows if r.get("step", 0) <= resume_step]
        if len(kept) != len(rows) or not self.path.exists():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, row: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Loss and temperature against step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r and math.isfinite(r["loss"])]
    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(steps, [r["loss"] for r in rows])
    left.set(xlabel="step", ylabel="contrastive loss", title="loss")
    right.plot(steps, [r["temperature"] for r in rows], color="tab:orange")
    right.set(xlabel="step", ylabel="t", title="temperature (learned, log space)")
    fig.tight_layout()
    png_path = Path(png_path)
    with replacing(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return png_path
