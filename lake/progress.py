"""Progress that a person can read, in a terminal or in a log file.

On a terminal: a tqdm bar. Redirected to a file (a cluster job's log): no `\\r` frames,
one plain line every `every_s` seconds (`EMOLAKE_PROGRESS_EVERY`, default 30) and a
last line when done. Messages go through `write`, so they land on lines of their own
instead of being glued onto a bar.
"""

from __future__ import annotations

import os
import sys
import time


def _every() -> float:
    try:
        return max(0.0, float(os.environ.get("EMOLAKE_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or u == "TiB":
            return f"{n:.0f} {u}" if u == "B" else f"{n:.1f} {u}"
        n /= 1024


def plural(unit: str, n: float = 2) -> str:
    """"clip" -> "clips", "batch" -> "batches" (one of them stays singular)."""
    if n == 1 or unit == "B":
        return unit
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _number(n: float, unit: str) -> str:
    return human_bytes(n) if unit == "B" else f"{n:,.0f}"


def _rate(per_s: float, unit: str) -> str:
    if unit == "B":
        return f"{human_bytes(per_s)}/s"
    return f"{per_s:,.{1 if per_s < 10 else 0}f} {plural(unit)}/s"


def duration(seconds: float) -> str:
    """72 -> "1 min 12 s"; 7300 -> "2 h 2 min"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def progress_line(desc: str, n: float, total: float | None, unit: str, elapsed: float, estimated: bool = False) -> str:
    """"ingest: 120 of ~2,400 clips (5%) in 37 s, 3.2 clips/s, about 12 min left": what is counted, of the same
    thing's total (`~` when it is an estimate), the rate, and the time left at that rate when a total is known."""
    known = total is not None and total >= n and total > 0  # an estimate that fell behind says nothing
    name = "" if unit == "B" else f" {plural(unit, total if known else n)}"  # bytes say their unit themselves
    if known:
        done = f"{_number(n, unit)} of {'~' if estimated else ''}{_number(total, unit)}{name} ({100 * n / total:.0f}%)"
    else:
        done = f"{_number(n, unit)}{name}"
    line = f"{desc}: {done} in {duration(elapsed)}"
    if elapsed > 0 and n:
        line += f", {_rate(n / elapsed, unit)}"
        if known and total > n:
            line += f", about {duration((total - n) * elapsed / n)} left"
    return line


class Progress:
    """`update(n)`, `set_postfix(**kw)`, `write(msg)`, `close()`; `total` may be set (or re-estimated) later."""

    def __init__(self, desc: str, total: float | None = None, unit: str = "it", initial: float = 0,
                 enabled: bool = True, file=None, every_s: float | None = None, estimated: bool = False):
        """`unit`: what is counted, singular ("clip", "step"); `estimated`: the total is an estimate (shown `~`)."""
        self.desc, self.unit, self.file, self.estimated = desc, unit, file or sys.stderr, estimated
        self.enabled = enabled
        self.n, self._total, self._postfix = initial, total, ""
        self._t0 = self._last = time.time()
        self._every = _every() if every_s is None else every_s
        self._bar = None
        if enabled and getattr(self.file, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, total=total, unit=unit, initial=initial, dynamic_ncols=True, leave=False,
                             mininterval=0.5, file=self.file, unit_scale=unit == "B")

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, value):
        self._total = value
        if self._bar is not None:
            self._bar.total = value
            self._bar.refresh()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.time() - self._last >= self._every:
            self._line()

    def set_postfix(self, **values) -> None:
        self._postfix = "  ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, message: str) -> None:
        """A message on its own line, above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def _line(self) -> None:
        self._last = time.time()
        line = progress_line(self.desc, self.n, self._total, self.unit, self._last - self._t0, self.estimated)
        print(line + (f"  {self._postfix}" if self._postfix else ""), file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
