"""A MathVista-style training mix: geometry, charts and science diagrams, as problem rows.

MathVista's questions fall into five tasks: figure QA, geometry problem solving, math
word problems, textbook QA and visual QA. This mix covers the first, second and fourth
with three public training sets (columns as their hub dataset cards declare them):

- ``geometry3k``: ``hiyouga/geometry3k`` (``images``, ``problem``, ``answer``),
  free-form answers (see ``prepare_geometry3k.py``);
- ``chartqa``: ``HuggingFaceM4/ChartQA`` (``image``, ``query``, ``label`` -- a list
  holding the answer -- and ``human_or_machine``), free-form answers;
- ``scienceqa``: ``lmms-lab/ScienceQA``, config ``ScienceQA-IMG`` (the questions with
  an image: ``image``, ``question``, ``choices``, ``answer`` -- the index of the right
  choice --, ``hint``, ...), multiple choice.

MathVista itself (``AI4Math/MathVista``, testmini) is the evaluation set and is never
read here. Its questions were collected from the test and validation splits of sources
like these, so ``--exclude-questions FILE`` (a local parquet/jsonl/json with a
``question`` column, e.g. an export of MathVista testmini) drops every training or
test row whose normalized question text occurs in it (reason ``in_eval_set``).

``train.parquet`` holds up to ``--train-per-source`` rows of each source's train split
(a seeded random choice), ``test.parquet`` up to ``--test-per-source`` rows of each
source's test split; the ``task`` column names the source.

    python data/prepare_mathvista_mix.py --out data/mathvista_mix
    python data/prepare_mathvista_mix.py --out data/mathvista_mix --exclude-questions testmini.jsonl
    python data/prepare_mathvista_mix.py --out /tmp/mix --from-local DIR   # DIR/<source>/train.jsonl, ...
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep_common import (  # noqa: E402
    Drop,
    Drops,
    PrepError,
    Split,
    check_limit,
    clean_question,
    clean_text,
    convert,
    one_image,
    parser,
    read_file,
    read_hub,
    read_local,
    records_head,
    report,
    require_columns,
    row_id,
    run_main,
    sample,
    write_split,
)
from prepare_geometry3k import convert_geometry3k  # noqa: E402

Converter = Callable[..., tuple[list[dict[str, Any]], Drops]]


def convert_chartqa(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    split: str,
    base_dir: Path | None = None,
    source: str = "HuggingFaceM4/ChartQA",
) -> tuple[list[dict[str, Any]], Drops]:
    """ChartQA records -> problem rows. ``label`` is a list holding the answer; a row
    with several labels is dropped (``multiple_answers``): one gold per problem."""
    require_columns(columns, ("image", "query", "label"), source)

    def to_row(record: Mapping[str, Any], i: int) -> dict[str, Any]:
        question = clean_question(record.get("query"))
        if not question:
            raise Drop("missing_question")
        label = record.get("label")
        labels = list(label) if isinstance(label, list | tuple) else [label]
        labels = [clean_text(v) for v in labels if clean_text(v)]
        if not labels:
            raise Drop("missing_answer")
        if len(labels) > 1:
            raise Drop("multiple_answers")
        return {
            "id": row_id("chartqa", split, i),
            "question": question,
            "answer": labels[0],
            "choices": None,
            "image": one_image(record.get("image"), base_dir),
        }

    return convert(records, to_row, task="chartqa", split=split)


def convert_scienceqa(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    split: str,
    base_dir: Path | None = None,
    source: str = "lmms-lab/ScienceQA",
) -> tuple[list[dict[str, Any]], Drops]:
    """ScienceQA records -> multiple-choice problem rows. The gold is the text of choice
    ``answer`` (an index); a non-empty ``hint`` is put before the question as context.
    Rows without an image are dropped (``no_image``)."""
    require_columns(columns, ("image", "question", "choices", "answer"), source)

    def to_row(record: Mapping[str, Any], i: int) -> dict[str, Any]:
        question = clean_question(record.get("question"))
        if not question:
            raise Drop("missing_question")
        choices = record.get("choices")
        if not isinstance(choices, list | tuple) or len(choices) < 2:
            raise Drop("bad_choices")
        choices = [clean_text(c) for c in choices]
        index = record.get("answer")
        if isinstance(index, bool) or not isinstance(index, int):
            raise Drop("missing_answer")
        if not 0 <= index < len(choices):
            raise Drop("answer_out_of_range")
        hint = clean_text(record.get("hint"))
        return {
            "id": row_id("scienceqa", split, i),
            "question": f"Context: {hint}\n{question}" if hint else question,
            "answer": choices[index],
            "choices": choices,
            "image": one_image(record.get("image"), base_dir),
        }

    return convert(records, to_row, task="scienceqa", split=split)


@dataclass(frozen=True)
class Source:
    """One source of the mix: its hub id, config, split names and converter."""

    hub_id: str
    config: str | None
    splits: Mapping[str, str]  # our split -> the hub's
    convert: Converter


SOURCES: dict[str, Source] = {
    "geometry3k": Source("hiyouga/geometry3k", None, {"train": "train", "test": "test"}, convert_geometry3k),
    "chartqa": Source("HuggingFaceM4/ChartQA", None, {"train": "train", "test": "test"}, convert_chartqa),
    "scienceqa": Source(
        "lmms-lab/ScienceQA", "ScienceQA-IMG", {"train": "train", "test": "test"}, convert_scienceqa
    ),
}  # fmt: skip
EVAL_ONLY = ("AI4Math/MathVista",)  # never a source of this mix


def normalize_question(text: Any) -> str:
    """Lower-case words of a question, punctuation and spacing ignored (for matching
    a training question against an evaluation set)."""
    return " ".join(re.findall(r"[a-z0-9]+", clean_question(text).lower()))


def read_exclusions(paths: Sequence[str]) -> set[str]:
    """Normalized questions of every file in ``paths`` (each needs a ``question`` column)."""
    out: set[str] = set()
    for path in paths:
        split = read_file(Path(path))
        require_columns(split.columns, ("question",), str(path))
        out.update(normalize_question(r.get("question")) for r in split.records)
    out.discard("")
    return out


def exclude(rows: list[dict[str, Any]], questions: set[str], drops: Drops) -> list[dict[str, Any]]:
    """``rows`` without those whose question is in ``questions`` (``in_eval_set``)."""
    if not questions:
        return rows
    kept = []
    for row in rows:
        if normalize_question(row["question"]) in questions:
            drops.add("in_eval_set", row["id"])
        else:
            kept.append(row)
    return kept


def build_mix(
    splits: Mapping[str, Split],
    split: str,
    *,
    per_source: int | None,
    seed: int = 0,
    excluded: set[str] | frozenset[str] = frozenset(),
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], Drops, dict[str, int]]:
    """One split of the mix from each source's records (``splits``: source name ->
    :class:`~prep_common.Split`): converted, matched against ``excluded`` questions,
    then at most ``per_source`` rows of each source. Returns the rows, the drops, and
    the number of rows kept per source."""
    rows: list[dict[str, Any]] = []
    drops, counts = Drops(), {}
    for name, src in splits.items():
        converter = SOURCES[name].convert
        got, dropped = converter(
            records_head(src.records, limit), src.columns, split, src.base_dir, src.origin
        )
        got = exclude(got, set(excluded), dropped)
        got = sample(got, per_source, seed)
        drops.merge(dropped)
        counts[name] = len(got)
        rows.extend(got)
    return rows, drops, counts


def load_split(name: str, split: str, from_local: str | None, limit: int | None) -> Split:
    src = SOURCES[name]
    if src.hub_id in EVAL_ONLY:
        raise PrepError(f"{name}: {src.hub_id} is an evaluation set, not training data")
    if from_local:
        return read_local(Path(from_local) / name, split)
    return read_hub(src.hub_id, src.splits[split], src.config, limit)


def main(argv: Sequence[str] | None = None) -> list[str]:
    p = parser(__doc__.splitlines()[0], "data/mathvista_mix")
    p.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help=f"comma-separated sources ({','.join(SOURCES)})",
    )
    p.add_argument("--train-per-source", type=int, default=6000, metavar="N")
    p.add_argument("--test-per-source", type=int, default=200, metavar="N")
    p.add_argument(
        "--exclude-questions",
        action="append",
        default=[],
        metavar="FILE",
        help="drop rows whose question occurs in FILE (a question column); repeatable",
    )
    p.epilog = "With --from-local DIR, each source is read from DIR/<source>/."
    args = p.parse_args(argv)
    check_limit(args.limit)
    names = [n.strip() for n in args.sources.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise PrepError(f"--sources: unknown {unknown or names}; valid: {', '.join(SOURCES)}")
    excluded = read_exclusions(args.exclude_questions)
    caps = {"train": args.train_per_source, "test": args.test_per_source}
    lines = []
    for split, cap in caps.items():
        if cap < 1:
            raise PrepError(f"--{split}-per-source: must be >= 1, got {cap}")
        splits = {n: load_split(n, split, args.from_local, args.limit) for n in names}
        rows, drops, counts = build_mix(
            splits, split, per_source=cap, seed=args.seed, excluded=excluded, limit=args.limit
        )
        path = write_split(rows, Path(args.out), split, with_image=True)
        per = ", ".join(f"{n} {k}" for n, k in counts.items())
        lines.append(report(split, path, len(rows), drops) + f" [{per}]")
        print(f"{split}: rows per source: {per}")
    return lines


if __name__ == "__main__":
    raise SystemExit(run_main(main, sys.argv[1:]))
