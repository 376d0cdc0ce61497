"""Time MathVista scoring of 1000 items and report agreement with the official verdicts.

    python scripts/bench_scoring.py [--shared DIR_WITH_MATHVISTA_OUTPUT_FILES] [--repeat 3]

For each official output file: wall time of scoring all items with our rule-based
extraction and with ``--use-extraction`` (best of ``--repeat``), the agreement of the
rule-based verdicts with the official ones on well-formed official extractions, and the
count of refusals (reported apart). Target: under 10 s per 1000 items.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mhpo_vl.eval.mathvista import is_well_formed, score_items, scores_layout, validate_items

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mathvista"


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_file(path: Path, repeat: int) -> None:
    items = validate_items(json.loads(path.read_text()), path)
    rule_s, (results, _) = best_time(lambda: score_items(items, use_extraction=False), repeat)
    ext_s, _ = best_time(lambda: scores_layout(score_items(items, True)[0]), repeat)
    good = [p for p in items if is_well_formed(items[p].get("extraction"), items[p])]
    agree = sum(results[p]["true_false"] == items[p].get("true_false", False) for p in good)
    print(
        f"{path.name}: {len(items)} items | rule-based {rule_s:.3f} s | use-extraction "
        f"{ext_s:.3f} s | agreement {100 * agree / len(good):.2f}% ({agree}/{len(good)} "
        f"well-formed) | refusals {len(items) - len(good)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = sorted(args.shared.glob("output_*.json"))
    if not files:
        raise SystemExit(f"no output_*.json under {args.shared}")
    for path in files:
        bench_file(path, args.repeat)


if __name__ == "__main__":
    main()
