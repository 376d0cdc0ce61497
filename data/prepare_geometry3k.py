"""Geometry3K (hub ``hiyouga/geometry3k``) as problem rows: ``train.parquet``, ``test.parquet``.

The hub dataset has splits train (2101), validation (300) and test (601) with columns
``images`` (a list holding one diagram), ``problem`` (the question, with an ``<image>``
placeholder) and ``answer`` (the value of the right choice, e.g. ``3`` or
``2\\sqrt{3}``); newer revisions add ``id``, ``choices`` and ``ground_truth``, which are
not needed. The answer is kept free-form (no choices), as EasyR1 and verl train on it.

    python data/prepare_geometry3k.py --out data/geometry3k
    python data/prepare_geometry3k.py --out /tmp/g3k --limit 50          # a quick try
    python data/prepare_geometry3k.py --out /tmp/g3k --from-local DIR    # DIR/train.jsonl, ...

Recipes read ``data/geometry3k/train.parquet`` and ``data/geometry3k/test.parquet``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep_common import (  # noqa: E402
    Drop,
    Drops,
    Split,
    check_limit,
    clean_question,
    clean_text,
    convert,
    one_image,
    parser,
    read_hub,
    read_local,
    records_head,
    report,
    require_columns,
    row_id,
    run_main,
    write_split,
)

HUB_ID = "hiyouga/geometry3k"
TASK = "geometry3k"
COLUMNS = ("images", "problem", "answer")
SPLITS = {"train": "train", "test": "test"}  # our split -> the hub's


def convert_geometry3k(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    split: str,
    base_dir: Path | None = None,
    source: str = HUB_ID,
) -> tuple[list[dict[str, Any]], Drops]:
    """Hub-schema records of one split -> problem rows, and the rows dropped by reason.

    ``columns`` are the source's column names (checked first: a missing one is a
    :class:`~prep_common.MissingColumnError` naming it); ``base_dir`` resolves image
    paths in a local JSON copy."""
    require_columns(columns, COLUMNS, source)

    def to_row(record: Mapping[str, Any], i: int) -> dict[str, Any]:
        question = clean_question(record.get("problem"))
        if not question:
            raise Drop("missing_question")
        answer = clean_text(record.get("answer"))
        if not answer:
            raise Drop("missing_answer")
        return {
            "id": row_id(TASK, split, i),
            "question": question,
            "answer": answer,
            "choices": None,
            "image": one_image(record.get("images"), base_dir),
        }

    return convert(records, to_row, task=TASK, split=split)


def load_split(split: str, from_local: str | None, limit: int | None) -> Split:
    if from_local:
        return read_local(Path(from_local), split)
    return read_hub(HUB_ID, SPLITS[split], limit=limit)


def main(argv: Sequence[str] | None = None) -> list[str]:
    args = parser(__doc__.splitlines()[0], "data/geometry3k").parse_args(argv)
    check_limit(args.limit)
    lines = []
    for split in SPLITS:
        src = load_split(split, args.from_local, args.limit)
        rows, drops = convert_geometry3k(
            records_head(src.records, args.limit), src.columns, split, src.base_dir, src.origin
        )
        path = write_split(rows, Path(args.out), split, with_image=True)
        lines.append(report(split, path, len(rows), drops))
    return lines


if __name__ == "__main__":
    raise SystemExit(run_main(main, sys.argv[1:]))
