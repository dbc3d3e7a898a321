"""The eval de-duplication modes (LiT's Table 5 ablation) and which splits each one removes.

``none`` removes nothing, ``test`` the near-duplicates of test splits, ``train+test`` those of
every split (what LiT did). Kept apart so the CLI and the configs can name the modes without
importing the index. Memory: none.
"""

from __future__ import annotations

from typing import Literal

EvalMode = Literal["none", "test", "train+test"]
MODES: tuple[str, ...] = ("none", "test", "train+test")


def removes(mode: str, role: str) -> bool:
    """Whether a split with ``role`` (train or test) counts under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode == "train+test" or (mode == "test" and role == "test")
