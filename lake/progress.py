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


def _count(n: float, unit: str) -> str:
    return human_bytes(n) if unit == "B" else f"{n:.0f} {unit}"


class Progress:
    """`update(n)`, `set_postfix(**kw)`, `write(msg)`, `close()`; `total` may be set (or re-estimated) later."""

    def __init__(self, desc: str, total: float | None = None, unit: str = "it", initial: float = 0,
                 enabled: bool = True, file=None, every_s: float | None = None):
        self.desc, self.unit, self.file = desc, unit, file or sys.stderr
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
        elapsed = self._last - self._t0
        known = self._total and self._total >= self.n  # an estimate that fell behind says nothing
        done = _count(self.n, self.unit) + (f" of {_count(self._total, self.unit)}" if known else "")
        rate = f", {_count(self.n / elapsed, self.unit)}/s" if elapsed > 0 and self.n else ""
        print(f"{self.desc}: {done} in {elapsed:.0f} s{rate}" + (f"  {self._postfix}" if self._postfix else ""),
              file=self.file, flush=True)

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
