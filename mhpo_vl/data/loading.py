"""Load problems from a registered dataset name, a hub id, or local files.

Local files: ``.parquet``, ``.jsonl``/``.json``, ``.csv``, a ``save_to_disk``
folder, or an ``imagefolder`` folder with ``metadata.jsonl``. Columns are mapped
onto the problem-row schema (``id, question, answer, choices, image, ...``) by an
explicit ``columns`` mapping or by common names. Rows with a missing question or
answer, or a missing/unreadable image in a dataset that has images, are dropped,
counted and reported with the first few row ids; nothing is dropped silently.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
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


def _load_local(path: Path, split: str) -> Any:
    import datasets

    try:
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                ds = datasets.load_from_disk(str(path))
                return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            return datasets.load_dataset(str(path), split=split)
        fmt = LOCAL_FORMATS.get(path.suffix)
        if fmt is None:
            raise UserError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_FORMATS)}")
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not read dataset {path}: {exc}") from None


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def check_dataset_spec(spec: Any, key: str) -> None:
    """Fail early (at validate time) on a dataset that cannot exist."""
    if spec.source in DATASETS:
        return
    if Path(spec.source).expanduser().exists() or _looks_like_hub_id(spec.source):
        return
    raise UserError(
        f"{key}.source: {spec.source!r} is neither a registered dataset "
        f"({', '.join(DATASETS.names())}), an existing path, nor a hub id (owner/name)"
    )


def resize_within(image: Any, min_pixels: int | None, max_pixels: int | None) -> Any:
    """Scale ``image`` (keeping its aspect) so that width*height lies in [min, max]."""
    w, h = image.size
    area = w * h
    scale = 1.0
    if max_pixels and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif min_pixels and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    if scale == 1.0:
        return image
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size)


@dataclass
class ProblemSet:
    """Valid rows of a dataset, decoded on access into the problem-row schema."""

    dataset: Any
    columns: dict[str, str]
    indices: list[int]
    name: str
    base_dir: Path | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        raw = self.dataset[self.indices[i]]
        row = {key: raw.get(col) for key, col in self.columns.items()}
        row["id"] = str(row["id"]) if row.get("id") is not None else str(self.indices[i])
        row["answer"] = _as_answer(row["answer"])
        row["question"] = str(row["question"])
        if "image" in self.columns:
            image = open_image(row["image"], self.base_dir)
            row["image"] = resize_within(image, self.min_pixels, self.max_pixels)
        else:
            row["image"] = None
        row.setdefault("choices", None)
        return row

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [self[i] for i in range(min(len(self), limit or len(self)))]

    @property
    def num_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())


def _as_answer(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if len(value) != 1 else str(value[0])
    return str(value).strip()


def open_image(value: Any, base_dir: Path | None = None) -> Any:
    """A PIL RGB image from a PIL image, a ``{bytes, path}`` dict, a path (relative to
    ``base_dir``) or a 1-list of those; ``ValueError``/``OSError`` when there is none."""
    from PIL import Image

    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        raise ValueError("no image")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    path = Path(str(value))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as img:
        return img.convert("RGB")


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


def _scan(
    ds: Any, mapping: dict[str, str], base_dir: Path | None
) -> tuple[list[int], dict[str, list[str]]]:
    """Indices of usable rows, and the ids of dropped rows by reason."""
    import datasets

    image_col = mapping.get("image")
    if image_col is not None and isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    keep, dropped = [], {}
    cols = [c for c in {mapping["question"], mapping["answer"], image_col, mapping.get("id")} if c]
    for i, raw in enumerate(ds.select_columns(cols)):
        rid = str(raw.get(mapping.get("id"), i)) if mapping.get("id") else str(i)
        reason = _row_problem(raw, mapping, image_col, base_dir)
        if reason:
            dropped.setdefault(reason, []).append(rid)
        else:
            keep.append(i)
    return keep, dropped


def _row_problem(
    raw: Mapping[str, Any], mapping: dict[str, str], image_col: str | None, base_dir: Path | None
) -> str | None:
    if raw[mapping["question"]] in (None, ""):
        return "missing question"
    if raw[mapping["answer"]] in (None, "", []):
        return "missing answer"
    if image_col is not None:
        value = raw[image_col]
        if value in (None, [], ""):
            return "missing image"
        try:
            _verify_image(value, base_dir)
        except Exception:
            return "unreadable image"
    return None


def _verify_image(value: Any, base_dir: Path | None) -> None:
    from PIL import Image

    if isinstance(value, list | tuple):
        value = value[0]
    if isinstance(value, Image.Image):
        return
    if isinstance(value, Mapping) and value.get("bytes"):
        Image.open(io.BytesIO(value["bytes"])).verify()
        return
    path = Path(value["path"] if isinstance(value, Mapping) else value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    with Image.open(path) as img:
        img.verify()


def load_problems(
    spec: Any, key: str = "data", *, min_pixels: int | None = None, max_pixels: int | None = None
) -> ProblemSet:
    """Load the dataset ``spec`` (a :class:`~mhpo_vl.config.DatasetSpec`) as a ProblemSet."""
    columns = dict(spec.columns)
    base_dir = None
    if spec.source in DATASETS:
        loaded = DATASETS.get(spec.source)(split=spec.split, seed=spec.seed)
        ds, preset = loaded if isinstance(loaded, tuple) else (loaded, {})
        columns = {**preset, **columns}
    elif Path(spec.source).expanduser().exists():
        path = Path(spec.source).expanduser()
        ds = _load_local(path, spec.split)
        base_dir = path if path.is_dir() else path.parent
    else:
        ds = _load_hub(spec.source, spec.split)
    if spec.size is not None:
        ds = ds.select(range(min(spec.size, len(ds))))
    mapping = _map_columns(list(ds.column_names), columns, key)
    _drop_empty_image_column(ds, mapping, explicit="image" in columns)
    keep, dropped = _scan(ds, mapping, base_dir)
    total = len(ds)
    if dropped:
        detail = "; ".join(
            f"{reason}: {len(ids)} (rows {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
            for reason, ids in dropped.items()
        )
        log.warning(
            "%s (%s): dropped %d of %d rows: %s", key, spec.source, total - len(keep), total, detail
        )
    if not keep:
        raise UserError(f"{key} ({spec.source}): no usable rows out of {total}")
    return ProblemSet(ds, mapping, keep, spec.source, base_dir, min_pixels, max_pixels, dropped)


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
