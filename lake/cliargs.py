"""Command lines from plain dataclasses; each field's help doubles as its `--help` line, and
each numeric field's range is checked once, the same way, at parse time and in `__post_init__`.

    @dataclass
    class Config:
        data_root: str = arg(REQUIRED, "the shard set to train on")
        epochs: int = arg(150, "passes over the train split", range=at_least(1))

        def __post_init__(self):
            check_ranges(self)

`add_dataclass_args(parser, Config)` adds `--data-root` and `--epochs` with those defaults
(`--epochs 0` fails at parse time: "argument --epochs: must be at least 1, got 0");
`from_args(Config, args)` builds the dataclass back. Presets are dicts of field overrides
applied as new parser defaults, so explicit flags still win. Plain argparse flags take the
same checks with `type=bounded(int, at_least(1))`. `HelpFormatter` shows a flag's default
only where it says something: never "(default: None)", "(default: )" or a default the help
text already states.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields

from lake.errors import LakeError

REQUIRED = MISSING


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of allowed values; None = unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def describe(self) -> str:
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {self.lo:g}" if self.lo is not None else "finite"
        if self.lo is None:
            return f"{'below' if self.hi_open else 'at most'} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def at_least(lo) -> Range:
    return Range(lo=lo)


def above(lo) -> Range:
    return Range(lo=lo, lo_open=True)


def between(lo, hi, hi_open: bool = False) -> Range:
    return Range(lo=lo, hi=hi, hi_open=hi_open)


def check_value(name: str, value, rng: Range | None) -> None:
    """Raise LakeError naming the flag and its range when `value` (or any value of a list) is outside it (NaN and
    inf never fit)."""
    for v in value if isinstance(value, (list, tuple)) else (value,):
        if rng is not None and not rng.contains(v):
            raise LakeError(f"{name} must be {rng.describe()}, got {v}")


def bounded(kind, rng: Range):
    """An argparse `type=` that parses with `kind` (int or float) and checks the range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"must be {rng.describe()}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def arg(default, help: str, range: Range | None = None, **kw):
    """A dataclass field with its command-line help, an optional numeric `range`, and optional
    argparse keywords (`choices`, `nargs`, `const`, `metavar`)."""
    return field(default=default, metadata={"help": help, "range": range, **kw})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(obj) -> None:
    """Check every field of a dataclass instance against its declared range (library use)."""
    for f in fields(obj):
        check_value(flag_name(f.name), getattr(obj, f.name), f.metadata.get("range"))


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag = flag_name(f.name)
        kw = {"help": f.metadata["help"]}
        for k in ("choices", "nargs", "const", "metavar"):
            if k in f.metadata:
                kw[k] = f.metadata[k]
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, **kw)
            continue
        kind = {"int": int, "float": float}.get(str(f.type).removeprefix("list[").removesuffix("]"), str)
        rng = f.metadata.get("range")
        kw["type"] = bounded(kind, rng) if rng is not None and kind is not str else kind
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        parser.add_argument(flag, **kw)


def from_args(cls, args: argparse.Namespace):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; `(default: X)` after a flag's help only when X says something."""

    def _get_help_string(self, action):
        text = (action.help or "").replace(" (default: %(default)s)", "")  # BooleanOptionalAction adds it
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction):
            return text.rstrip(".") + (" (default: on)" if default else " (default: off)")
        if ("default" in text.lower() or default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, str) and not default) or action.required
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
                or not action.option_strings):
            return text
        return text.rstrip(".") + " (default: %(default)s)"
