"""What the dataset-preparation scripts in this folder share.

Each ``prepare_*.py`` script reads a hub dataset (or a local copy of the same schema,
``--from-local``), converts its rows with a pure function into the problem-row schema
that :func:`mhpo_vl.data.load_problems` reads, and writes ``train.parquet`` and
``test.parquet``. Written columns:

- ``id`` (str): ``<task>-<split>-<source id or row number>``, unique within a file;
- ``question`` (str): the problem text, without any ``<image>`` placeholder (the prompt
  templates place the image themselves);
- ``answer`` (str): the gold answer; for multiple choice the text of the right choice;
- ``choices`` (list of str, or null): the options of a multiple-choice problem;
- ``image`` (an image, stored as PNG/JPEG bytes in the file): vision datasets only;
- ``task`` (str): where the row came from (per-task accuracy in evaluation).

Rows that cannot be used are dropped, counted by reason and reported: the same
load-time checks the trainer's loader applies (:func:`mhpo_vl.data.check_row`), plus
each dataset's own (no image, no final answer, ...). A missing source column stops
with a :class:`MissingColumnError` naming it.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "test")
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")


class PrepError(Exception):
    """A problem with the input as a whole (one line, printed without a traceback)."""


class MissingColumnError(PrepError):
    """The source lacks a column the conversion needs."""


def require_columns(columns: Iterable[str], required: Sequence[str], source: str) -> None:
    """Raise :class:`MissingColumnError` naming the first of ``required`` not in ``columns``."""
    have = list(columns)
    for name in required:
        if name not in have:
            raise MissingColumnError(
                f"{source}: missing column {name!r} (columns: {', '.join(have) or 'none'}); "
                f"expected {', '.join(required)}"
            )


@dataclass
class Drops:
    """Rows dropped from one split, by reason (with the first few ids of each)."""

    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, rid: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(rid)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: Drops) -> None:
        self.total += other.total
        for reason, n in other.reasons.items():
            self.reasons[reason] += n
            for rid in other.examples.get(reason, []):
                if len(self.examples.setdefault(reason, [])) < 3:
                    self.examples[reason].append(rid)

    def summary(self) -> str:
        if not self.reasons:
            return f"dropped 0 of {self.total} rows"
        parts = ", ".join(
            f"{reason} {n} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in self.reasons.most_common()
        )
        return f"dropped {self.count} of {self.total} rows: {parts}"


class Drop(Exception):
    """Raised inside a row conversion: the row is dropped for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- text and images


def clean_question(text: Any) -> str:
    """The problem text with ``<image>`` placeholders removed and outer space stripped."""
    if not isinstance(text, str):
        return ""
    return _IMAGE_TOKEN.sub(" ", text).strip()


def clean_text(value: Any) -> str:
    """A cell as stripped text ("" for None); whole floats lose their ``.0``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def image_bytes(value: Any, base_dir: Path | None = None) -> bytes:
    """The encoded bytes of one image given as a PIL image, a ``{bytes, path}`` mapping
    (how ``datasets`` stores images), or a file path (relative to ``base_dir``); checked
    to open as an image. :class:`Drop` with ``unreadable_image`` when it does not."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format=value.format or "PNG")
        data = buf.getvalue()
    elif isinstance(value, Mapping) and value.get("bytes"):
        data = bytes(value["bytes"])
    else:
        path = value.get("path") if isinstance(value, Mapping) else value
        if not isinstance(path, str) or not path:
            raise Drop("no_image")
        file = Path(path)
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        if not file.is_file():
            raise Drop("image_not_found")
        data = file.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise Drop("unreadable_image") from None
    return data


def one_image(value: Any, base_dir: Path | None = None) -> dict[str, Any]:
    """The single image of a row (a value or a list holding one) as ``{bytes, path}``;
    rows with none or several are dropped (the schema holds one image per problem)."""
    if isinstance(value, list | tuple):
        if len(value) > 1:
            raise Drop("multiple_images")
        value = value[0] if value else None
    if value is None:
        raise Drop("no_image")
    return {"bytes": image_bytes(value, base_dir), "path": None}


def check_schema_row(row: Mapping[str, Any]) -> None:
    """The trainer's own load-time row checks (blank text, choices, gold in choices)."""
    from mhpo_vl.data.validate import check_row

    problem = check_row(row)
    if problem is not None:
        raise Drop(problem[0])


# ---------------------------------------------------------------- reading sources


@dataclass
class Split:
    """One split of a source: its rows (dicts), column names and, for local files, the
    folder relative image paths are read from."""

    records: Iterable[Mapping[str, Any]]
    columns: list[str]
    origin: str
    base_dir: Path | None = None


def local_split_file(root: Path, split: str) -> Path:
    """``root/<split>.parquet`` (or ``.jsonl`` / ``.json``); a clear error if none exists."""
    if not root.is_dir():
        raise PrepError(f"--from-local {root}: not a folder (it should hold train/test files)")
    for suffix in LOCAL_SUFFIXES:
        path = root / f"{split}{suffix}"
        if path.is_file():
            return path
    wanted = " or ".join(f"{split}{s}" for s in LOCAL_SUFFIXES)
    raise PrepError(f"--from-local {root}: no {wanted} in that folder")


def read_file(path: Path) -> Split:
    """One local file in a hub schema: parquet (as ``datasets`` writes it, images as
    ``{bytes, path}``), JSON lines, or a JSON list (images as paths relative to the
    file's folder)."""
    if not path.is_file():
        raise PrepError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return Split(table.to_pylist(), list(table.column_names), str(path), path.parent)
    if path.suffix not in (".jsonl", ".json"):
        raise PrepError(f"{path}: unsupported file type; use .parquet, .jsonl or .json")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise PrepError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise PrepError(f"{path}: expected JSON objects, one per record")
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return Split(records, list(columns), str(path), path.parent)


def read_local(root: Path, split: str) -> Split:
    """A split of a local copy in the hub schema: ``root/<split>.<parquet|jsonl|json>``."""
    return read_file(local_split_file(root, split))


def read_hub(repo: str, split: str, config: str | None = None, limit: int | None = None) -> Split:
    """A split downloaded with ``datasets.load_dataset``; images stay encoded bytes.
    With ``limit`` the split is streamed and only its first ``limit`` rows are read."""
    import datasets

    where = f"{repo}" + (f" ({config})" if config else "") + f" split {split!r}"
    try:
        ds = datasets.load_dataset(repo, config, split=split, streaming=limit is not None)
    except Exception as exc:  # offline, renamed, gated: one line naming the dataset
        raise PrepError(f"could not load {where}: {exc}") from None
    for name, feature in (ds.features or {}).items():
        inner = getattr(feature, "feature", feature)
        if isinstance(inner, datasets.Image) and inner.decode:
            undecoded = copy.deepcopy(feature)  # an Image, or a list of them
            getattr(undecoded, "feature", undecoded).decode = False
            ds = ds.cast_column(name, undecoded)
    if limit is not None:
        ds = ds.take(limit)
    columns = list(ds.column_names or (ds.features or {}))
    return Split(ds, columns, where)


# ---------------------------------------------------------------- converting, writing


def convert(
    records: Iterable[Mapping[str, Any]],
    to_row: Any,
    *,
    task: str,
    split: str,
) -> tuple[list[dict[str, Any]], Drops]:
    """``to_row(record, index)`` over every record; dropped rows counted by reason.
    Each row gets the task name and passes the loader's own checks."""
    rows, drops = [], Drops()
    for i, record in enumerate(records):
        drops.total += 1
        try:
            row = to_row(record, i)
            check_schema_row(row)
        except Drop as drop:
            drops.add(drop.reason, row_id(task, split, i))
            continue
        row["task"] = task
        rows.append(row)
    return rows, drops


def row_id(task: str, split: str, index: int) -> str:
    """``<task>-<split>-<position in the source split>``: unique, and stable for one
    revision of the source (source ids are not always unique, so they are not used)."""
    return f"{task}-{split}-{index}"


def sample(rows: list[dict[str, Any]], size: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``size`` rows, a seeded random choice kept in source order."""
    if size is None or len(rows) <= size:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[i] for i in keep]


def features(with_image: bool) -> Any:
    import datasets

    cols = {
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "task": datasets.Value("string"),
    }
    if with_image:
        cols["image"] = datasets.Image()
    return datasets.Features(cols)


def write_split(rows: list[dict[str, Any]], out_dir: Path, split: str, with_image: bool) -> Path:
    """Write ``rows`` to ``out_dir/<split>.parquet`` in the problem-row schema."""
    import datasets

    if not rows:
        raise PrepError(f"{split}: no usable rows to write")
    feats = features(with_image)
    clean = [{name: row.get(name) for name in feats} for row in rows]
    ids = Counter(row["id"] for row in clean)
    dup = next((rid for rid, n in ids.items() if n > 1), None)
    if dup is not None:
        raise PrepError(f"{split}: row id {dup!r} occurs {ids[dup]} times")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{split}.parquet"
    datasets.Dataset.from_list(clean, features=feats).to_parquet(str(path))
    return path


# ---------------------------------------------------------------- command line


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--out", default=default_out, help=f"folder for train.parquet/test.parquet ({default_out})"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="read only the first N rows of each source split (a quick try; streams them)",
    )
    p.add_argument(
        "--from-local",
        default=None,
        metavar="PATH",
        help="read a local copy in the hub schema instead of downloading: a folder with "
        "train/test .parquet, .jsonl or .json files",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of any subsampling (0)")
    return p


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise PrepError(f"--limit: must be >= 1, got {limit}")


def report(split: str, path: Path, n: int, drops: Drops) -> str:
    line = f"{split}: wrote {n} rows to {path} ({drops.summary()})"
    print(line)
    return line


def run_main(main: Any, argv: Sequence[str] | None) -> int:
    """Run a script's ``main(argv)``; a :class:`PrepError` is one line on stderr, exit 2."""
    try:
        main(argv)
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def records_head(records: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first ``limit`` records (all for None)."""
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            return
        yield record
