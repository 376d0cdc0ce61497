"""Agreement of our evaluation-path verdicts with a file's own verdicts.

    python scripts/mathvista_agreement.py FILE [FILE ...] [--fallback official|none]

FILE is a MathVista output file (``pid -> item`` with ``response``, the problem fields
and the file's ``true_false``, e.g. the official pipeline's GPT-4-extraction verdicts),
or a ``.jsonl`` corpus (one item per line with ``response``, the problem fields,
``style``, ``official_extraction`` and optionally ``split``; the reference verdict is
the official normalization of ``official_extraction``). Prints agreement overall, for
multiple choice and free form, on the items we read as answers and on those we read as
refusals (scored wrong by design), per split and per style when items carry them.
``--split NAME`` reads only that split of a corpus; ``--show`` prints each disagreement.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from mhpo_vl.eval.mathvista import FALLBACKS, score_item, validate_items
from mhpo_vl.rewards.normalize import normalize_row_answer


def reference_verdict(item: dict[str, Any]) -> bool:
    """The file's verdict: ``true_false``, or for a corpus record the official
    normalization of its ``official_extraction``."""
    if "official_extraction" in item:
        prediction = normalize_row_answer(item["official_extraction"], item, official=True)
        return prediction is not None and prediction == item["answer"]
    return bool(item.get("true_false", False))


def load(path: Path) -> dict[str, dict[str, Any]]:
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        data = {f"{i}:{r.get('pid', i)}": r for i, r in enumerate(records)}
    else:
        data = json.loads(path.read_text("utf-8"))
    return validate_items(data, path)


def agreement(items: dict[str, dict[str, Any]], fallback: str = "official") -> dict[str, list[int]]:
    """``group -> [agreeing, total]`` for "all", "multi_choice", "free_form", each
    ``style:NAME``, and "answered" / "refusals" (the items we read as refusals score
    wrong by design; the reference may have mapped them onto a choice by luck)."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in items.values():
        scored = score_item(item, False, fallback)
        same = int(scored["true_false"] == reference_verdict(item))
        groups = ["all", str(item.get("question_type"))]
        groups.append("refusals" if scored["refusal"] else "answered")
        prefix = f"{item['split']}:" if item.get("split") else ""
        if prefix:
            groups.append(f"{prefix}all")
        if item.get("style"):
            groups.append(f"{prefix}style:{item['style']}")
        for group in groups:
            table[group][0] += same
            table[group][1] += 1
    return dict(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--fallback", choices=FALLBACKS, default="official")
    parser.add_argument("--split", help="only this split of a corpus (e.g. dev)")
    parser.add_argument("--show", action="store_true", help="print each disagreement")
    args = parser.parse_args(argv)
    for path in args.files:
        items = load(path)
        if args.split:
            items = {k: v for k, v in items.items() if v.get("split") == args.split}
        if args.show:
            for key, item in items.items():
                ours = score_item(item, False, args.fallback)
                if ours["true_false"] != reference_verdict(item):
                    print(f"  {key} [{item.get('style', '')}] {item['response'][-200:]!r}")
                    print(
                        f"    ours {ours['extraction']!r} -> {ours['prediction']!r}; gold "
                        f"{item['answer']!r}; reference {item.get('official_extraction', '')!r}"
                    )
        table = agreement(items, args.fallback)
        print(f"{path}")
        for group in sorted(table, key=lambda g: ("style:" in g, ":" in g, g != "all", g)):
            same, total = table[group]
            print(f"  {group:32s} {100 * same / total:6.2f}%  ({same}/{total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
