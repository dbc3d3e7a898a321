"""Progress on the terminal for ``litflow`` CLI runs (tqdm: already installed by img2dataset)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from tqdm import tqdm


@contextlib.contextmanager
def ticking(description: str, count=None, unit: str = "items"):
    """A live line with elapsed time while a black-box stage runs (a Beam pipeline reports
    nothing until it ends); ``count()``, if given, is shown as the work done so far."""
    stop = threading.Event()
    bar = tqdm(desc=description, unit=unit, file=sys.stderr, bar_format="{desc}: {n_fmt} {unit} [{elapsed}]",
               disable=not sys.stderr.isatty())

    def tick():
        while not stop.wait(0.5):
            if count is not None:
                bar.n = count()
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        if count is not None:
            bar.n = count()
        bar.close()


def step_bar(total: int, description: str):
    """A progress bar for ``train(on_step=...)``: returns (callback, close)."""
    bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr, disable=not sys.stderr.isatty())
    started = time.perf_counter()

    def on_step(step: int, row: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", s=f"{time.perf_counter() - started:.0f}")
        bar.refresh()

    return on_step, bar.close
