"""Small helpers every layer shares: progress lines, log files, timing. Standard library only."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sized
from pathlib import Path


@contextlib.contextmanager
def third_party_warnings_summarised(tag: str, log: logging.Logger | None = None) -> Iterator[None]:
    """Hold back the warnings that libraries (the ONNX exporter, torch) raise while this runs, and say once how
    many there were and of what kind: they are about the libraries' internals, and drowned the useful lines.
    Each is logged to `log`; PYTHONWARNINGS set in the environment shows them as usual."""
    if os.environ.get("PYTHONWARNINGS"):
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if not caught:
        return
    kinds = sorted({w.category.__name__ for w in caught})
    for w in caught:
        if log is not None:
            log.info("library warning %s: %s", w.category.__name__, str(w.message).splitlines()[0][:300])
    say(tag, f"{len(caught)} warnings from libraries held back ({', '.join(kinds)}: about their internals, not your "
             "model); PYTHONWARNINGS=default shows them")


def say(tag: str, msg: str, log: logging.Logger | None = None, clock: bool = False) -> None:
    """One progress line on stderr, ``[tag] msg`` (``[tag HH:MM:SS] msg`` with ``clock``); also logged to ``log``."""
    if log is not None:
        log.info(msg)
    stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
    print(f"[{tag}{stamp}] {msg}", file=sys.stderr, flush=True)


def progress_steps(steps: Sized, tag: str, unit: str, enabled: bool = True) -> Iterator:
    """Iterate over ``steps``, saying ``[tag] i/n unit`` at each tenth of the way (the stdlib's progress bar: the
    package's base install carries no tqdm)."""
    total = len(steps)
    said = 0
    for i, step in enumerate(steps, 1):
        yield step
        if enabled and total >= 10 and i * 10 // total > said:
            said = i * 10 // total
            say(tag, f"{i}/{total} {unit}")


@contextlib.contextmanager
def logging_to(log: logging.Logger, path: Path) -> Iterator[None]:
    """Within the block, ``log`` writes INFO lines with their time to the file at ``path`` (appended)."""
    path = Path(path).resolve()
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in log.handlers):
        yield  # already there (a nested or repeated call)
        return
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(fh)
        fh.close()


def median_s(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls: what a benchmark
    quotes. A device's profile takes ``isolated_s`` instead."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def isolated_s(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Wall-clock seconds of ``fn()`` in isolation: the fastest of ``repeats`` calls, after ``warmup`` untimed ones.
    For deterministic compute the fastest call is the one nothing else interrupted; a median moves with whatever
    else the host runs meanwhile (other nodes starting up beside a node's calibration: on 2 cores, medians of 5
    moved by up to 20 % between calibrations under load, the fastest of 5 by up to 8 %)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it (what results and logs record: a
    repository's outputs then name no machine's folders), else as it is."""
    p = Path(path).expanduser()
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


class SignalFlag:
    """A flag a signal handler sets and a loop polls. threading.Event.set takes a lock: a second signal that arrives
    while the handler of the first holds it runs the handler again on the same thread, which waits on that lock
    for ever (a worker that outlived its run did)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

