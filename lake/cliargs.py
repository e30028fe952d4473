"""Configs as plain dataclasses; each field's help doubles as its `--help` line.

    @dataclass
    class Config:
        data_root: str = arg(REQUIRED, "the shard set to train on")
        epochs: int = arg(150, "passes over the train split")

`add_dataclass_args(parser, Config)` adds `--data-root` and `--epochs` with those
defaults; `from_args(Config, args)` builds the dataclass back. Presets are dicts of
field overrides applied as new parser defaults, so explicit flags still win.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields

REQUIRED = MISSING


def arg(default, help: str, **kw):
    """A dataclass field with its command-line help (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **kw})


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        kw = {"help": f.metadata["help"]}
        for k in ("choices", "nargs", "const", "metavar"):
            if k in f.metadata:
                kw[k] = f.metadata[k]
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, **kw)
            continue
        kw["type"] = {"int": int, "float": float}.get(f.type, str)
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        parser.add_argument(flag, **kw)


def from_args(cls, args: argparse.Namespace):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
