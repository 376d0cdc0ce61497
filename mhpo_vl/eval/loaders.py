"""Read a benchmark's records from the hub or from local files, as problem rows.

``source`` is None (the benchmark's hub id), a hub id, a local file (``.parquet``,
``.jsonl``, ``.json``: a list of records or MathVista's ``pid -> record`` object) or a
directory holding one such file per split (``<split>.parquet`` etc., e.g. DynaMath's
``sample_variant1.jsonl``). Local files use the same columns as the hub copy; image
columns may hold PIL images, ``{"bytes", "path"}`` dicts or paths relative to the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark, Row

SUFFIXES = (".parquet", ".jsonl", ".json")


def open_image(value: Any, base_dir: Path | None, where: str) -> Any:
    """A PIL RGB image (see :func:`mhpo_vl.data.loading.open_image`); errors name ``where``."""
    from mhpo_vl.data.loading import open_image as _open

    try:
        return _open(value, base_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        records = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path}: expected a list of records or an object of records")
        return records
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {n}: not valid JSON ({exc})") from None
        return out
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _split_file(directory: Path, split: str) -> Path:
    for suffix in SUFFIXES:
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    raise UserError(f"{directory}: no file for split {split!r} ({split}.parquet/.jsonl/.json)")


def _read_hub(bench: Benchmark, hub_id: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, bench.config, split=split)
    except Exception as exc:  # offline, missing split, gated: one line naming the source
        raise UserError(
            f"cannot load {hub_id} split {split!r}: {type(exc).__name__}: {exc}"
        ) from None
    return list(ds)


def read_records(bench: Benchmark, source: str | None) -> list[tuple[str, Path | None, list[dict]]]:
    """``(split, base_dir, records)`` for each split of ``bench`` from ``source``."""
    if source is not None and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if path.is_dir():
            files = [(s, _split_file(path, s)) for s in bench.splits]
        else:
            files = [(bench.splits[0], path)]
        return [(s, f.parent, _read_local(f)) for s, f in files]
    hub_id = source or bench.hub_id
    return [(s, None, _read_hub(bench, hub_id, s)) for s in bench.splits]


def load_benchmark(
    name: str, source: str | None = None, limit: int | None = None, images: bool = True
) -> list[Row]:
    """Problem rows of benchmark ``name`` (first ``limit`` per split if given).

    ``images=False`` skips opening images (scoring only). A record whose conversion
    fails names the benchmark, split and row.
    """
    bench = BENCHMARKS.get(name)
    if bench.loader is not None and source is None:
        return bench.loader(bench, limit)
    rows: list[Row] = []
    for split, base_dir, records in read_records(bench, source):
        for i, rec in enumerate(records[:limit] if limit else records):
            where = f"{name} ({source or bench.hub_id}) split {split!r} row {i}"
            try:
                row = bench.to_row(rec, split)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise UserError(
                    f"{where}: cannot read record ({type(exc).__name__}: {exc})"
                ) from None
            if not row.get("id"):
                row["id"] = f"{split}-{i}"
            if not str(row.get("answer", "")).strip():
                raise UserError(f"{where}: no answer")
            if images and bench.image_column is not None:
                value = rec.get(bench.image_column)
                if value is None and bench.image_column == "decoded_image":
                    value = rec.get("image")  # local copies often keep only the path
                row["image"] = open_image(value, base_dir, where)
            rows.append(row)
    if not rows:
        raise UserError(f"{name} ({source or bench.hub_id}): no rows")
    return rows
