"""Load problems from a registered dataset name, a hub id, or local files.

Local files: ``.parquet``, ``.jsonl``/``.json``, ``.csv``, a ``save_to_disk``
folder, or an ``imagefolder`` folder with ``metadata.jsonl``. Columns are mapped
onto the problem-row schema (``id, question, answer, choices, image, ...``) by an
explicit ``columns`` mapping or by common names.

Bad rows are dropped where they are found, counted, and named (split, id, file, reason)
in the log and in :attr:`ProblemSet.bad`; nothing is dropped or coerced silently:

- at load, without decoding any image: blank or non-text question/answer, text that is
  not UTF-8, ``choices`` that is not a list, a gold answer outside the choices
  (:mod:`mhpo_vl.data.validate`), a missing or structurally broken image file, an image
  over ``max_image_pixels`` or of an aspect ratio the processor refuses (its header), a
  prompt longer than ``data.max_prompt_tokens`` (its text and the image's vision tokens,
  counted from the image's size: :class:`~mhpo_vl.models.processors.PromptLimit`);
- where a row is used (:meth:`ProblemSet.take`, :meth:`ProblemSet.valid_rows`): an
  image that fails to decode in full (:mod:`mhpo_vl.data.images`).

A split with more than ``max_bad_frac`` bad rows stops with a :class:`UserError`
(:mod:`mhpo_vl.data.badrows`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.data.badrows import BadRow, BadRowLog
from mhpo_vl.data.images import (
    DECODE_MAX_PIXELS,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageRejected,
    decode_image,
    open_lazy,
    resize_within,
    verify_image,
)
from mhpo_vl.data.validate import check_row
from mhpo_vl.errors import UserError, missing_file
from mhpo_vl.registry import Registry

log = logging.getLogger(__name__)

# name -> (split, seed) -> datasets.Dataset already in (or mappable to) the row schema
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

COLUMN_GUESSES = {
    "id": ("id", "pid", "idx", "problem_id", "uid"),
    "question": ("question", "problem", "query", "prompt"),
    "answer": ("answer", "gold", "ground_truth", "solution", "label"),
    "choices": ("choices", "options"),
    "image": ("image", "images", "decoded_image", "image_path", "file_name"),
    "answer_type": ("answer_type",),
    "question_type": ("question_type",),
    "precision": ("precision",),
    "task": ("task", "category", "subject"),
}
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@DATASETS.register("synthetic_vision")
def _synthetic_vision(split: str, seed: int) -> Any:
    from mhpo_vl.data.synthetic import synthetic_vision

    return synthetic_vision(split=split, seed=seed)


@DATASETS.register("synthetic_text")
def _synthetic_text(split: str, seed: int) -> Any:
    from mhpo_vl.data.synthetic import synthetic_text

    return synthetic_text(split=split, seed=seed)


def _hub(repo: str, columns: dict[str, str]) -> Callable[..., Any]:
    def load(split: str, seed: int) -> Any:
        return _load_hub(repo, split), columns

    return load


# Hub datasets used by the paper's recipes (the user's path; loaders tested on local copies).
DATASETS.register(
    "geometry3k", _hub("hiyouga/geometry3k", {"question": "problem", "image": "images"})
)
DATASETS.register("math12k", _hub("hiyouga/math12k", {"question": "problem"}))


def _load_hub(repo: str, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(repo, split=split)
    except Exception as exc:  # offline, unknown repo, unknown split: all user-facing
        raise UserError(f"could not load hub dataset {repo!r} split {split!r}: {exc}") from None


def _load_local(path: Path, split: str) -> tuple[Any, list[tuple[str, str, str]]]:
    """The dataset at ``path``, and ``(id, reason, detail)`` of the records that could
    not be read at all (only for a ``.jsonl`` file that the fast reader refuses)."""
    import datasets

    try:
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                ds = datasets.load_from_disk(str(path))
                return (ds[split] if isinstance(ds, datasets.DatasetDict) else ds), []
            return datasets.load_dataset(str(path), split=split), []
        fmt = LOCAL_FORMATS.get(path.suffix)
        if fmt is None:
            raise UserError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_FORMATS)}")
        return datasets.load_dataset(fmt, data_files=str(path), split="train"), []
    except UserError:
        raise
    except Exception as exc:
        if path.suffix == ".jsonl":
            return _read_jsonl_lines(path, exc)
        raise UserError(f"could not read dataset {path}: {exc}") from None


def _read_jsonl_lines(path: Path, first_error: Exception) -> tuple[Any, list]:
    """A ``.jsonl`` file line by line (the slow path, after the fast reader failed):
    lines that are not UTF-8, not a JSON object, or hold lone surrogates are set aside
    with their line number; the rest become the dataset."""
    import datasets

    records, bad = [], []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        problem, record = _parse_line(line)
        if problem is not None:
            bad.append((f"line {n}", problem[0], problem[1]))
        else:
            records.append(record)
    if not records:
        raise UserError(f"could not read dataset {path}: {first_error}") from None
    try:
        return datasets.Dataset.from_list(records), bad
    except Exception as exc:  # mixed types across lines: one line naming the file
        raise UserError(f"could not read dataset {path}: {exc}") from None


def _parse_line(line: bytes) -> tuple[tuple[str, str] | None, dict[str, Any]]:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return ("text_not_utf8", f"line is not UTF-8 ({exc.reason} at byte {exc.start})"), {}
    except json.JSONDecodeError as exc:
        return ("unreadable_row", f"not valid JSON ({exc.msg})"), {}
    if not isinstance(record, dict):
        return ("unreadable_row", "not a JSON object"), {}
    if _has_surrogates(record):
        return ("text_not_utf8", "holds a lone surrogate escape (not UTF-8 text)"), {}
    return None, record


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


def _looks_like_hub_id(source: str) -> bool:
    """``owner/name``, and not a file name (``data/train.jsonl`` is a local path)."""
    parts = source.split("/")
    local = source.startswith((".", "~")) or Path(source).suffix in LOCAL_FORMATS
    return len(parts) == 2 and all(parts) and not local


def check_dataset_spec(spec: Any, key: str) -> None:
    """Fail early (at validate time) on a dataset that cannot exist."""
    if spec.source in DATASETS:
        return
    if Path(spec.source).expanduser().exists() or _looks_like_hub_id(spec.source):
        return
    raise missing_file(
        "dataset", spec.source, f"{key}.source",
        f"it is neither a registered dataset ({', '.join(DATASETS.names())}), an existing "
        "path, nor a hub id (owner/name): prepare the data first (the recipe's 'Data:' "
        "comment says how) or fix the path",
    )  # fmt: skip


class BadRowError(UserError):
    """A row that cannot be used (``ProblemSet[i]`` on a bad row); names the row."""


@dataclass
class ProblemSet:
    """The usable rows of a dataset, decoded on access into the problem-row schema.

    Rows that fail the load-time checks are not in ``indices``. Rows whose image fails
    to decode are found where they are used: :meth:`get` returns None for them,
    :meth:`take` and :meth:`valid_rows` skip them. Either way the row is recorded in
    :attr:`bad` (split, id, file, reason), logged, and judged against
    ``max_bad_frac``. Whether a row is bad depends only on its data and the image
    limits, so two ProblemSets over the same files skip the same rows.
    """

    dataset: Any  # the mapped columns only; an image column is not decoded by datasets
    columns: dict[str, str]
    indices: list[int]
    name: str
    base_dir: Path | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    bad: BadRowLog = field(default_factory=lambda: BadRowLog("data", ""))
    source_file: str | None = None
    text_only: int = 0  # usable rows without an image
    _good: set[int] = field(default_factory=set, repr=False)
    _bad: set[int] = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row ``i`` decoded; :class:`BadRowError` naming it when it cannot be used."""
        try:
            return self._build(i)
        except ImageRejected as exc:
            raise BadRowError(f"{self.bad.split}: {self._bad_row(i, exc).describe()}") from None

    def get(self, i: int) -> dict[str, Any] | None:
        """Row ``i`` decoded, or None for a bad row (recorded the first time it is found,
        remembered, judged against ``max_bad_frac``)."""
        if i in self._bad:
            return None
        first = i not in self._good
        try:
            row = self._build(i)
        except ImageRejected as exc:
            self._bad.add(i)
            self.bad.decoded += 1
            self.bad.add(self._bad_row(i, exc))
            self._check()
            return None
        if first:
            self._good.add(i)
            self.bad.decoded += 1
            if self.bad.rows:  # a good decode can complete the sample that is judged
                self.bad.check(len(self))
        return row

    def take(self, sampler: Any, k: int, rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
        """This process's share (every ``world``-th, from ``rank``) of the next ``k`` good
        rows in ``sampler``'s order (an :class:`~mhpo_vl.data.EpochSampler`).

        Bad rows are skipped and the sampler is asked for more, so a step always has
        ``k`` prompts. Every process judges every drawn row (decoding the others' rows
        only the first time it sees them), so all agree on the same ``k`` rows without
        communicating; the sampler's state alone still resumes the order exactly, since
        which rows are bad is a function of the data.
        """
        mine: list[dict[str, Any]] = []
        good = 0
        while good < k:
            for i in sampler.next(k - good):
                slot_is_mine = good % world == rank
                if i in self._good and not slot_is_mine:
                    good += 1
                    continue
                row = self.get(i)
                if row is None:
                    continue
                if slot_is_mine:
                    mine.append(row)
                good += 1
        if rank == 0:
            self.bad.announce()
        return mine

    def valid_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The first ``limit`` (default all) good rows in dataset order, bad ones skipped
        and recorded: what an eval split is scored on."""
        out: list[dict[str, Any]] = []
        for i in range(len(self)):
            if limit is not None and len(out) >= limit:
                break
            row = self.get(i)
            if row is not None:
                out.append(row)
        self.bad.announce()
        return out

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Alias of :meth:`valid_rows`."""
        return self.valid_rows(limit)

    @property
    def bad_rows(self) -> list[BadRow]:
        """Every bad row found so far (load-time and decode-time)."""
        return list(self.bad.rows)

    def bad_row_metrics(self, prefix: str = "data") -> dict[str, float]:
        """Cumulative counts: ``<prefix>/bad_rows`` and ``<prefix>/bad_rows/<reason>``."""
        return self.bad.metrics(prefix)

    @property
    def dropped(self) -> dict[str, list[str]]:
        """Ids of the rows dropped at load time, by reason."""
        out: dict[str, list[str]] = {}
        for r in self.bad.rows:
            if r.stage == "load":
                out.setdefault(r.reason, []).append(r.id)
        return out

    @property
    def num_dropped(self) -> int:
        return self.bad.count("load")

    def _raw(self, i: int) -> dict[str, Any]:
        raw = self.dataset[self.indices[i]]
        return {key: raw.get(col) for key, col in self.columns.items()}

    def _row_id(self, i: int, row: Mapping[str, Any]) -> str:
        return str(row["id"]) if row.get("id") is not None else str(self.indices[i])

    def _build(self, i: int) -> dict[str, Any]:
        row = self._raw(i)
        row["id"] = self._row_id(i, row)
        row["answer"] = _as_answer(row["answer"])
        row["question"] = str(row["question"])
        if "image" in self.columns:
            row["image"] = decode_image(
                row["image"],
                self.base_dir,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
                max_image_pixels=self.max_image_pixels,
            )
        else:
            row["image"] = None
        row.setdefault("choices", None)
        return row

    def _bad_row(self, i: int, exc: ImageRejected) -> BadRow:
        rid = self._row_id(i, self._raw(i))
        file = exc.file or self.source_file
        return BadRow(self.bad.split, rid, exc.reason, exc.detail, file, "decode")

    def _check(self) -> None:
        if len(self._bad) == len(self):
            raise UserError(
                f"{self.bad.split} ({self.name}): every row is bad: {self.bad.summary()}"
            )
        self.bad.check(len(self))


def _as_answer(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if len(value) != 1 else str(value[0])
    return str(value).strip()


def open_image(value: Any, base_dir: Path | None = None, **limits: Any) -> Any:
    """A decoded PIL RGB image from a PIL image, a ``{bytes, path}`` dict, a path
    (relative to ``base_dir``) or a 1-list of those (see
    :func:`mhpo_vl.data.images.decode_image` for ``limits``); ``ValueError`` naming the
    problem when it cannot be used (``FileNotFoundError`` for a missing file)."""
    try:
        return decode_image(value, base_dir, **limits)
    except ImageRejected as exc:
        if exc.reason == "image_not_found":
            raise FileNotFoundError(exc.detail) from None
        raise ValueError(exc.detail) from None


def _map_columns(available: list[str], explicit: Mapping[str, str], name: str) -> dict[str, str]:
    for key, col in explicit.items():
        if key not in COLUMN_GUESSES:
            raise UserError(
                f"{name}: columns.{key}: unknown schema key; valid: {', '.join(COLUMN_GUESSES)}"
            )
        if col not in available:
            raise UserError(
                f"{name}: columns.{key}: no column {col!r}; columns are {', '.join(available)}"
            )
    mapping = dict(explicit)
    for key, guesses in COLUMN_GUESSES.items():
        if key not in mapping:
            found = next((g for g in guesses if g in available), None)
            if found is not None:
                mapping[key] = found
    for key in ("question", "answer"):
        if key not in mapping:
            raise UserError(
                f"{name}: no {key} column found (columns: {', '.join(available)}); "
                f"map one with columns: {{{key}: COLUMN}}"
            )
    return mapping


_SCAN_BATCH = 256


def _read_rows(ds: Any) -> Any:
    """``(i, row)`` for every row; ``row`` is None where a value cannot be read (bytes
    that are not UTF-8 in a string column fail only when that row is converted)."""
    n = len(ds)
    for start in range(0, n, _SCAN_BATCH):
        stop = min(n, start + _SCAN_BATCH)
        try:
            batch = ds[start:stop]
        except UnicodeDecodeError:
            for i in range(start, stop):
                yield i, _read_row(ds, i)
            continue
        for j in range(stop - start):
            yield start + j, {col: values[j] for col, values in batch.items()}


def _read_row(ds: Any, i: int) -> dict[str, Any] | None:
    try:
        return ds[i]
    except UnicodeDecodeError:
        return None


def _unreadable_id(ds: Any, mapping: dict[str, str], i: int) -> str:
    """The id of a row that cannot be read whole: its id column alone, else its position."""
    col = mapping.get("id")
    if col is not None:
        try:
            value = ds.select_columns([col])[i][col]
            if value is not None:
                return str(value)
        except UnicodeDecodeError:
            pass
    return str(i)


@dataclass(frozen=True)
class _Checks:
    """What the load-time checks of one split need: where relative image paths start,
    the image limits, and the prompt limit (None: none)."""

    base_dir: Path | None
    max_image_pixels: int | None
    min_pixels: int | None = None
    max_pixels: int | None = None
    prompt_limit: Any = None  # a PromptLimit: .problem(row, image_size) -> str | None

    def problem(self, row: Mapping[str, Any]) -> tuple[str, str, str | None] | None:
        """``(reason, detail, image file)`` of the first problem the cheap checks find."""
        problem = check_row(row)
        if problem is not None:
            return problem[0], problem[1], None
        size = None
        if "image" in row:
            try:
                verify_image(row["image"], self.base_dir, self.max_image_pixels)
                if self.prompt_limit is not None:
                    size = self.decoded_size(row["image"])
            except ImageRejected as exc:
                return exc.reason, exc.detail, exc.file
        if self.prompt_limit is not None:
            detail = self.prompt_limit.problem(row, size)
            if detail is not None:
                return "prompt_too_long", detail, None
        return None

    def decoded_size(self, value: Any) -> tuple[int, int]:
        """The (width, height) :func:`~mhpo_vl.data.images.decode_image` will give the
        image, from its header alone: the same :func:`resize_within` steps, applied to a
        stand-in that has only a size (a large JPEG decoded at reduced scale may land a
        pixel off)."""
        size = _header_size(value, self.base_dir)
        cap = self.max_pixels or DECODE_MAX_PIXELS
        shrunk = resize_within(_Sized(size), None, cap)
        return resize_within(shrunk, self.min_pixels, cap).size


def _header_size(value: Any, base_dir: Path | None) -> tuple[int, int]:
    """An image value's (width, height) from its header; a file opened here is closed,
    a caller's PIL image is not."""
    img = open_lazy(value, base_dir)
    given = value[0] if isinstance(value, list | tuple) and value else value
    try:
        return img.size
    finally:
        if img is not given:
            img.close()


@dataclass(frozen=True)
class _Sized:
    """An image's size, nothing else: what :func:`resize_within` reads and returns."""

    size: tuple[int, int]

    def resize(self, size: tuple[int, int]) -> _Sized:
        return _Sized(size)


def _scan(
    ds: Any, mapping: dict[str, str], log_: BadRowLog, checks: _Checks
) -> tuple[list[int], int]:
    """Indices of the rows that pass the load-time checks (the others go to ``log_``),
    and how many of those have no image."""
    keep, text_only = [], 0
    file = log_.source if checks.base_dir is not None else None
    for i, raw in _read_rows(ds):
        if raw is None:
            rid = _unreadable_id(ds, mapping, i)
            log_.add(BadRow(log_.split, rid, "text_not_utf8", "a text field is not UTF-8", file))
            continue
        row = {key: raw.get(col) for key, col in mapping.items()}
        rid = str(row["id"]) if row.get("id") is not None else str(i)
        problem = checks.problem(row)
        if problem is None:
            keep.append(i)
            text_only += row.get("image") is None
            continue
        reason, detail, where = problem
        log_.add(BadRow(log_.split, rid, reason, detail, where or file))
    return keep, text_only


def load_problems(
    spec: Any,
    key: str = "data",
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bad_frac: float | None = None,
    prompt_limit: Any = None,
) -> ProblemSet:
    """Load the dataset ``spec`` (a :class:`~mhpo_vl.config.DatasetSpec`) as a ProblemSet.

    ``key`` names the split in messages (``data.train``). Images are downscaled to
    ``max_pixels`` as they are decoded, rejected above ``max_image_pixels`` source
    pixels; rows whose prompt is over ``prompt_limit`` (a
    :class:`~mhpo_vl.models.processors.PromptLimit`; None: no limit) are dropped; more
    than ``max_bad_frac`` bad rows (None: no limit) is a :class:`UserError`.
    """
    columns = dict(spec.columns)
    base_dir, source_file = None, None
    pre_bad: list[tuple[str, str, str]] = []
    if spec.source in DATASETS:
        loaded = DATASETS.get(spec.source)(split=spec.split, seed=spec.seed)
        ds, preset = loaded if isinstance(loaded, tuple) else (loaded, {})
        columns = {**preset, **columns}
    elif Path(spec.source).expanduser().exists():
        path = Path(spec.source).expanduser()
        ds, pre_bad = _load_local(path, spec.split)
        base_dir = path if path.is_dir() else path.parent
        source_file = str(path)
    else:
        ds = _load_hub(spec.source, spec.split)
    if spec.size is not None:
        ds = ds.select(range(min(spec.size, len(ds))))
    mapping = _map_columns(list(ds.column_names), columns, key)
    _drop_empty_image_column(ds, mapping, explicit="image" in columns)
    ds = _undecoded(ds.select_columns(sorted(set(mapping.values()))), mapping.get("image"))
    bad = BadRowLog(key, source_file or spec.source, max_bad_frac=max_bad_frac)
    for rid, reason, detail in pre_bad:
        bad.add(BadRow(key, rid, reason, detail, source_file))
    checks = _Checks(base_dir, max_image_pixels, min_pixels, max_pixels, prompt_limit)
    keep, text_only = _scan(ds, mapping, bad, checks)
    bad.total = len(ds) + len(pre_bad)
    if bad.rows:
        log.warning(
            "%s (%s): dropped %d of %d rows: %s",
            key,
            spec.source,
            len(bad.rows),
            bad.total,
            bad.summary(),
        )
        bad.mark_announced()
    if not keep:
        detail = f": {bad.summary()}" if bad.rows else ""
        raise UserError(f"{key} ({spec.source}): no usable rows out of {bad.total}{detail}")
    bad.check(len(keep))
    return ProblemSet(
        ds, mapping, keep, spec.source, base_dir, min_pixels, max_pixels, max_image_pixels,
        bad, source_file, text_only,
    )  # fmt: skip


def _undecoded(ds: Any, image_col: str | None) -> Any:
    """``ds`` with its image column (a ``datasets.Image``, or a list of them) left as
    bytes/paths: we decode it ourselves, with size limits, where the row is used;
    ``datasets`` would decode every image in full on access."""
    import datasets

    feature = ds.features.get(image_col) if image_col is not None else None
    inner = getattr(feature, "feature", feature)
    if not isinstance(inner, datasets.Image) or not inner.decode:
        return ds
    feature = copy.deepcopy(feature)
    getattr(feature, "feature", feature).decode = False
    return ds.cast_column(image_col, feature)


def _drop_empty_image_column(ds: Any, mapping: dict[str, str], explicit: bool) -> None:
    """A guessed image column with no image in any row means a text-only dataset."""
    import datasets

    col = mapping.get("image")
    if col is None or explicit:
        return
    view = ds.select_columns([col])
    if isinstance(view.features[col], datasets.Image):
        view = view.cast_column(col, datasets.Image(decode=False))
    # row by row, stopping at the first image: an image dataset costs one row, not a
    # read of every image's bytes
    if all(row[col] is None for row in view):
        del mapping["image"]
