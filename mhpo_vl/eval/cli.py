"""``mhpo-vl eval ...`` subcommands (placeholder until the eval module lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="score predictions or evaluate a model")
    p.set_defaults(func=lambda args: p.print_help())
