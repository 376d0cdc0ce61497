"""Read a benchmark's records from the hub or from local files, as problem rows.

``source`` is None (the benchmark's hub id), a hub id, a local file (``.parquet``,
``.jsonl``, ``.json``: a list of records or MathVista's ``pid -> record`` object) or a
directory holding one such file per split (``<split>.parquet`` etc., e.g. DynaMath's
``sample_variant1.jsonl``). Local files use the same columns as the hub copy; image
columns may hold PIL images, ``{"bytes", "path"}`` dicts or paths relative to the file.
Bad records are skipped, counted and named like bad training rows
(:mod:`mhpo_vl.data.loading`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhpo_vl.data.badrows import BadRow, BadRowLog
from mhpo_vl.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageRejected, decode_image
from mhpo_vl.data.validate import check_row
from mhpo_vl.errors import UserError, missing_file
from mhpo_vl.eval import safejson
from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark, Row

SUFFIXES = (".parquet", ".jsonl", ".json")


def open_image(value: Any, base_dir: Path | None, where: str, **limits: Any) -> Any:
    """A decoded PIL RGB image (see :func:`mhpo_vl.data.images.decode_image` for
    ``limits``); a :class:`UserError` naming ``where`` when it cannot be used."""
    try:
        return decode_image(value, base_dir, **limits)
    except ImageRejected as exc:
        raise UserError(f"{where}: {exc.detail}") from None


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        data = safejson.loads(path.read_text(encoding="utf-8"), str(path))
        records = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path}: expected a list of records or an object of records")
        return records
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                out.append(safejson.loads(line, f"{path}: line {n}"))
        return out
    if path.suffix == ".parquet":
        import datasets

        return list(
            _undecoded(datasets.load_dataset("parquet", data_files=str(path), split="train"))
        )
    raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _split_file(directory: Path, split: str, name: str) -> Path:
    for suffix in SUFFIXES:
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    raise missing_file(
        f"file of split {split!r}", directory / f"{split}.parquet|.jsonl|.json",
        f"--data {name}=...", f"a benchmark folder holds one file per split ({', '.join(SUFFIXES)})",
    )  # fmt: skip


def check_source(name: str, source: str | None) -> None:
    """Fail before any model loads when ``source`` (``--data NAME=PATH``) is a local path
    that does not exist: a path that cannot be a hub id (``owner/name``) is one."""
    if source is None or Path(source).expanduser().exists():
        return
    parts = source.split("/")
    hub_like = len(parts) == 2 and all(parts) and Path(source).suffix not in SUFFIXES
    if not hub_like or source.startswith((".", "~")):
        raise missing_file(
            "benchmark data", source, f"--data {name}=...",
            f"give a {'/'.join(SUFFIXES)} file or a folder with one file per split, or leave "
            "--data out to read the hub copy",
        )  # fmt: skip


def _read_hub(bench: Benchmark, hub_id: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, bench.config, split=split)
    except Exception as exc:  # offline, missing split, gated: one line naming the source
        raise UserError(
            f"cannot load {hub_id} split {split!r}: {type(exc).__name__}: {exc}"
        ) from None
    return list(_undecoded(ds))


def _undecoded(ds: Any) -> Any:
    """``ds`` with every image column left as bytes/paths: ``datasets`` would decode each
    image in full on access; :func:`decode_image` decodes it with size limits."""
    import datasets

    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def read_records(bench: Benchmark, source: str | None) -> list[tuple[str, Path | None, list[dict]]]:
    """``(split, base_dir, records)`` for each split of ``bench`` from ``source``."""
    check_source(bench.name, source)
    if source is not None and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if path.is_dir():
            files = [(s, _split_file(path, s, bench.name)) for s in bench.splits]
        else:
            files = [(bench.splits[0], path)]
        return [(s, f.parent, _read_local(f)) for s, f in files]
    hub_id = source or bench.hub_id
    return [(s, None, _read_hub(bench, hub_id, s)) for s in bench.splits]


def load_benchmark(
    name: str,
    source: str | None = None,
    limit: int | None = None,
    images: bool = True,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bad_frac: float | None = None,
    report: BadRowLog | None = None,
    prompt_limit: Any = None,
    template: str | None = None,
) -> list[Row]:
    """Problem rows of benchmark ``name``: the first ``limit`` usable rows per split if
    given.

    Bad records are handled as in training data: a record that cannot be converted, a
    blank or non-text question/answer, non-UTF-8 text, ``choices`` that is not a list, a
    gold answer outside the choices, an image that is missing, too large
    (``max_image_pixels``), of a geometry the processor refuses, or that fails to
    decode: each is skipped, recorded in ``report`` (a fresh
    :class:`~mhpo_vl.data.BadRowLog` when None; pass one to read the counts) with its
    split, row and file, and logged once. More than ``max_bad_frac`` bad rows (None: no
    limit), or none usable, is a :class:`UserError` naming the first bad rows.
    ``images=False`` skips opening images (scoring only). Images are downscaled to
    ``max_pixels`` as they are decoded. A row whose prompt, built with ``template``
    (default the benchmark's own), is over ``prompt_limit`` (a
    :class:`~mhpo_vl.models.processors.PromptLimit`; None: no limit) is bad too.
    """
    bench = BENCHMARKS.get(name)
    label = f"{name} ({source or bench.hub_id})"
    if report is None:
        report = BadRowLog(name, source or bench.hub_id)
    report.max_bad_frac = max_bad_frac
    limits = {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "max_image_pixels": max_image_pixels,
    }
    if bench.loader is not None and source is None:
        splits = [(bench.splits[0], None, bench.loader(bench, limit), True)]
    else:
        splits = [(s, d, recs, False) for s, d, recs in read_records(bench, source)]
    if prompt_limit is not None:
        prompt_limit = prompt_limit.with_template(template or bench.template)
    rows: list[Row] = []
    for split, base_dir, records, converted in splits:
        reader = _RecordReader(
            bench, split, base_dir, images, limits, report, converted, prompt_limit
        )
        rows += reader.rows(records, limit)
    report.announce()
    if not rows:
        detail = f": {report.summary()}" if report.rows else ""
        raise UserError(f"{label}: no usable rows out of {report.total}{detail}")
    report.check(report.total - report.count("load"))
    return rows


@dataclass
class _RecordReader:
    """Turns one split's records into usable rows, recording the bad ones."""

    bench: Benchmark
    split: str
    base_dir: Path | None
    images: bool
    limits: dict[str, Any]
    report: BadRowLog
    converted: bool  # records are rows already (an embedded loader's output)
    prompt_limit: Any = None  # a PromptLimit with the benchmark's template, or None

    def rows(self, records: list[dict[str, Any]], limit: int | None) -> list[Row]:
        out: list[Row] = []
        for i, rec in enumerate(records):
            if limit is not None and len(out) >= limit:
                break
            self.report.total += 1
            row = self.row(i, rec)
            if row is not None:
                out.append(row)
        return out

    def row(self, i: int, rec: dict[str, Any]) -> Row | None:
        """Record ``i`` as a checked row with its image decoded, or None (recorded)."""
        name = f"{self.split} row {i}"
        try:
            row = dict(rec) if self.converted else self.bench.to_row(rec, self.split)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"cannot read record ({type(exc).__name__}: {exc})"
            return self._bad(name, "unreadable_row", detail, None)
        if not row.get("id"):
            row["id"] = f"{self.split}-{i}"
        name = f"id {row['id']}, {name}"
        problem = check_row(row)
        if problem is not None:
            return self._bad(name, problem[0], problem[1], None)
        if self.images and self.bench.image_column is not None:
            value = rec.get(self.bench.image_column)
            if value is None and self.bench.image_column == "decoded_image":
                value = rec.get("image")  # local copies often keep only the path
            try:
                row["image"] = decode_image(value, self.base_dir, **self.limits)
            except ImageRejected as exc:
                return self._bad(name, exc.reason, exc.detail, exc.file, "decode")
            self.report.decoded += 1
        return self._fitting(name, row)

    def _fitting(self, name: str, row: Row) -> Row | None:
        """``row``, or None (recorded) when its prompt is over the prompt limit."""
        if self.prompt_limit is None:
            return row
        image = row.get("image")
        size = image.size if image is not None and hasattr(image, "size") else None
        detail = self.prompt_limit.problem(row, size)
        if detail is not None:
            return self._bad(name, "prompt_too_long", detail, None)
        return row

    def _bad(
        self, name: str, reason: str, detail: str, file: str | None, stage: str = "load"
    ) -> None:
        if stage == "decode":
            self.report.decoded += 1
        self.report.add(BadRow(self.report.split, name, reason, detail, file, stage))
        return None
