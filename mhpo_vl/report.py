"""``mhpo-vl report TABLE``: the paper's table beside ours, as markdown and a PNG.

The paper's numbers are data in ``eval/paper/<TABLE>.yaml`` (title, model, metric,
evaluation protocol, columns as ``paper name -> benchmark registry name``, one entry per
row with its values, ``approx`` where the paper says "about", and the recipe that
reproduces it). Our numbers are the files ``scripts/reproduce.py`` leaves behind:
``<results root>/<row output_dir>/paper_eval/<benchmark>/results.json``, written by
``mhpo-vl eval run`` (its ``metrics`` hold ``avg@<k>`` in percent). A results file
whose k, temperature or response budget differ from the table's protocol is not used,
and the report says so. With no results at all the table renders with our cells "—".

The layout is the paper's: one row per method, the benchmarks as columns and the
average last; each column shows the paper's value, ours and the difference (ours minus
the paper's). Our average is the mean over the table's columns, shown only when every
column has a result.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.errors import UserError, missing_file
from mhpo_vl.eval import safejson

ROOT = Path(__file__).resolve().parents[1]
TABLES_DIR = ROOT / "eval" / "paper"
RESULTS_SUBDIR = "paper_eval"
DASH = "—"
AVG = "avg"


def table_names(tables_dir: Path = TABLES_DIR) -> list[str]:
    """The tables there are data for (``eval/paper/*.yaml``), by file name."""
    return sorted(p.stem for p in Path(tables_dir).glob("*.yaml"))


def load_table(name: str, tables_dir: Path = TABLES_DIR) -> dict[str, Any]:
    """One table's data; an unknown name is a :class:`UserError` listing the valid ones."""
    names = table_names(tables_dir)
    if name not in names:
        raise UserError(f"unknown table {name!r}; valid names: {', '.join(names)}")
    path = Path(tables_dir) / f"{name}.yaml"
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    table.setdefault("table", name)
    table.setdefault("file", str(path))
    for key in ("title", "model", "metric", "protocol", "columns", "rows", "provenance"):
        if key not in table:
            raise UserError(f"eval/paper/{name}.yaml: missing {key!r}")
    wanted = {*table["columns"].values(), AVG}
    for row_key, row in table["rows"].items():
        if set(row.get("values", {})) != wanted:
            raise UserError(
                f"eval/paper/{name}.yaml: rows.{row_key}.values must have exactly "
                f"{', '.join(sorted(wanted))}"
            )
    return table


def benchmarks(table: Mapping[str, Any]) -> list[str]:
    """The table's columns as benchmark registry names, in the paper's order."""
    return list(table["columns"].values())


def read_recipe(
    path: str | Path, root: Path = ROOT, where: str = "a paper table row's recipe"
) -> dict[str, Any]:
    """A recipe as plain YAML (no validation): enough to know its output folder.
    ``where`` says where ``path`` came from, for the missing-file error."""
    file = root / path
    if not file.is_file():
        fix = "write the paper's recipes with python recipes/paper/make_recipes.py"
        raise missing_file("recipe file", file, where, fix)
    return yaml.safe_load(file.read_text(encoding="utf-8"))


def row_output_dir(
    row: Mapping[str, Any], root: Path = ROOT, where: str = "a paper table row's recipe"
) -> str:
    """Where a row's run (and its ``paper_eval/``) lives: the recipe's
    ``trainer.output_dir``, or the row's own ``output_dir`` when nothing is trained."""
    if row.get("recipe"):
        return read_recipe(row["recipe"], root, where)["trainer"]["output_dir"]
    return row["output_dir"]


def row_eval_model(row: Mapping[str, Any], root: Path = ROOT) -> str:
    """What a row evaluates: the recipe's final checkpoint, or the hub model itself."""
    if row.get("recipe"):
        recipe = read_recipe(row["recipe"], root)
        return f"{recipe['trainer']['output_dir']}/checkpoint-{recipe['trainer']['max_steps']}"
    return row["model"]


def results_path(output_dir: str | Path, benchmark: str) -> Path:
    return Path(output_dir) / RESULTS_SUBDIR / benchmark / "results.json"


def check_result(
    path: Path, table: Mapping[str, Any], model: str | None = None
) -> tuple[float | None, str | None]:
    """``(value, None)`` for a results file that follows the table's protocol (and was
    made from ``model``, when given), else ``(None, why not)``."""
    if not path.is_file():
        return None, "no results"
    try:
        res = safejson.loads(path.read_text(encoding="utf-8"), str(path))  # depth bounded
        settings, metrics = res.get("settings", {}), res["metrics"]
    except UserError as exc:
        return None, f"unreadable ({str(exc).removeprefix(f'{path}: ')})"
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    proto, decoding = table["protocol"], settings.get("decoding", {})
    checks = {
        "k": (settings.get("k"), proto["k"]),
        "temperature": (decoding.get("temperature"), proto["temperature"]),
        "max_new_tokens": (decoding.get("max_new_tokens"), proto["max_new_tokens"]),
    }
    if model is not None:
        checks["model"] = (settings.get("model", {}).get("path"), model)
    for key, (got, want) in checks.items():
        if got != want:
            return None, f"{key} {got}, not {want}"
    value = metrics.get(table["metric"])
    if not isinstance(value, int | float):
        return None, f"no {table['metric']} in its metrics"
    return float(value), None


@dataclass
class Cell:
    paper: float | None
    ours: float | None
    approx: bool = False

    @property
    def delta(self) -> float | None:
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper


@dataclass
class Comparison:
    table: dict[str, Any]
    cells: dict[str, dict[str, Cell]]  # row -> column (benchmark or avg) -> cell
    sources: dict[str, str]  # row -> the folder its results were read from
    ignored: list[str] = field(default_factory=list)  # results files not used, and why


def compare(table: dict[str, Any], results_root: str | Path = ".") -> Comparison:
    """The paper's values and ours, cell by cell."""
    root = Path(results_root)
    if not root.is_dir():
        fix = "give the folder scripts/reproduce.py wrote the runs into (default: here)"
        raise missing_file("results folder", root, "--results-root", fix)
    cells: dict[str, dict[str, Cell]] = {}
    sources, ignored = {}, []
    for key, row in table["rows"].items():
        out = row_output_dir(row, where=f"rows.{key}.recipe in {table.get('file', table['table'])}")
        sources[key] = str(root / out / RESULTS_SUBDIR)
        approx = bool(row.get("approx"))
        cells[key] = {}
        for bench in benchmarks(table):
            path = results_path(root / out, bench)
            ours, why = check_result(path, table)
            if why and path.exists():
                ignored.append(f"{path}: {why}")
            cells[key][bench] = Cell(row["values"][bench], ours, approx)
        got = [cells[key][b].ours for b in benchmarks(table)]
        avg = sum(got) / len(got) if got and None not in got else None
        cells[key][AVG] = Cell(row["values"][AVG], avg, approx)
    return Comparison(table, cells, sources, ignored)


def _num(value: float | None, approx: bool = False, signed: bool = False) -> str:
    if value is None:
        return DASH
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return ("~" if approx else "") + text


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None
) -> list[str]:
    """The lines of a markdown table. ``align``: one letter per column, ``l`` (the
    default) or ``r``. Shared by ``mhpo-vl report`` and the tiny study's summary."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} letters for {len(header)} columns")
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_markdown(cmp: Comparison) -> str:
    table = cmp.table
    columns = [*table["columns"].items(), ("Avg", AVG)]
    head = ["method"] + [
        f"{label} {part}" for label, _ in columns for part in ("paper", "ours", "Δ")
    ]
    lines = [
        f"## {table['title']} (`{table['table']}`)",
        "",
        f"Paper vs ours, {table['metric']} in percent; Δ = ours − paper. "
        f'~: the paper says "about". {DASH}: not known, or not run yet.',
        "",
    ]
    body = []
    for key, row in table["rows"].items():
        shown = [row.get("label", key)]
        for _, col in columns:
            cell = cmp.cells[key][col]
            shown += [
                _num(cell.paper, cell.approx),
                _num(cell.ours),
                _num(cell.delta, cell.approx, signed=True),
            ]
        body.append(shown)
    lines += markdown_table(head, body, "l" + "r" * (len(head) - 1))
    p = table["protocol"]
    lines += [
        "",
        f"Model: {table['model']}. Protocol: {table['metric']}, k {p['k']}, temperature "
        f"{p['temperature']}, top_p {p['top_p']}, up to {p['max_new_tokens']} new tokens, "
        f"template {p['template']}. Columns: "
        + ", ".join(f"{label} = `{bench}`" for label, bench in table["columns"].items())
        + ".",
        "",
        f"Provenance: {' '.join(str(table['provenance']).split())}",
    ]
    notes = [" ".join(str(n).split()) for n in table.get("notes", [])]
    notes += [
        f"{row.get('label', key)}: {row['note']}"
        for key, row in table["rows"].items()
        if row.get("note")
    ]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    lines += ["", "Our results were read from:"]
    lines += [f"- {table['rows'][k].get('label', k)}: `{src}`" for k, src in cmp.sources.items()]
    if cmp.ignored:
        lines += ["", "Results files not used (not the table's protocol):"]
        lines += [f"- `{why}`" for why in cmp.ignored]
    return "\n".join(lines) + "\n"


def render_png(cmp: Comparison, path: str | Path) -> Path:
    """One panel per column (and the average): the paper's bar and ours for each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = cmp.table
    columns = [*table["columns"].items(), ("Avg", AVG)]
    rows = list(table["rows"])
    labels = [textwrap.fill(str(table["rows"][k].get("label", k)), 14) for k in rows]
    ncols = min(len(columns), 4)
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), squeeze=False, sharey=False
    )
    xs = list(range(len(rows)))
    width = 0.4
    for ax, (title, col) in zip(axes.flat, columns, strict=False):
        for i, key in enumerate(rows):
            cell = cmp.cells[key][col]
            for offset, value, color, hatch in (
                (-width / 2, cell.paper, "#9db4d0", "//" if cell.approx else None),
                (width / 2, cell.ours, "#d9822b", None),
            ):
                if value is None:
                    ax.text(i + offset, 0, DASH, ha="center", va="bottom", fontsize=7)
                    continue
                ax.bar(i + offset, value, width, color=color, hatch=hatch, edgecolor="white")
                ax.text(i + offset, value, f"{value:.1f}", ha="center", va="bottom", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="#9db4d0"),
        plt.Rectangle((0, 0), 1, 1, color="#d9822b"),
    ]
    fig.legend(
        handles,
        ['paper (hatched: "about")', "ours"],
        loc="upper right",
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(f"{table['title']}: paper vs ours (percent)", fontsize=10)
    # fixed margins (tight_layout would double the drawing time): room for the slanted
    # row labels under each panel and the title and legend above
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.75 / (3.4 * nrows), top=1 - 0.75 / (3.4 * nrows),
        wspace=0.3, hspace=0.85,
    )  # fmt: skip
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(
    name: str,
    results_root: str | Path = ".",
    out_dir: str | Path = "runs/paper_report",
    tables_dir: Path = TABLES_DIR,
) -> tuple[str, list[Path]]:
    """Render table ``name``: returns the markdown and the files written
    (``OUT/<name>.md`` and ``OUT/<name>.png``)."""
    cmp = compare(load_table(name, tables_dir), results_root)
    markdown = render_markdown(cmp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / f"{name}.md"
    md_path.write_text(markdown, encoding="utf-8")
    return markdown, [md_path, render_png(cmp, out / f"{name}.png")]
