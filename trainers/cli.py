"""The command line every trainer shares: its config dataclass as flags, and presets (`Task.main` runs it)."""

from __future__ import annotations

import argparse

from lake.cliargs import HelpFormatter, add_dataclass_args, from_args


def stage_parser(prog: str, config_cls, description: str, defaults: dict, presets: dict,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=HelpFormatter)
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
