"""The command line every trainer shares: its config dataclass as flags, presets, one error line."""

from __future__ import annotations

import argparse
import sys

from lake.cliargs import add_dataclass_args, from_args
from lake.errors import LakeError


def stage_parser(prog: str, config_cls, description: str, defaults: dict, presets: dict,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets), help="start from these settings ("
                   + "; ".join(f"{k}: {v.get('_help', k)}" for k, v in sorted(presets.items()))
                   + "); explicit flags still win")
    add_dataclass_args(p, config_cls)
    p.set_defaults(**defaults)
    return p


def parse_stage_args(parser: argparse.ArgumentParser, config_cls, presets: dict, argv):
    """Parse with the chosen preset's values as defaults, so that flags given explicitly win."""
    pre, _ = parser.parse_known_args(argv)
    if pre.preset:
        parser.set_defaults(**{k: v for k, v in presets[pre.preset].items() if not k.startswith("_")})
    return from_args(config_cls, parser.parse_args(argv))


def run_stage(task_cls, parse, argv=None) -> int:
    """main() of a trainer: parse, train, and turn a LakeError into one line and exit status 2."""
    from trainers.loop import train

    try:
        train(task_cls, parse(sys.argv[1:] if argv is None else argv))
        return 0
    except LakeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
