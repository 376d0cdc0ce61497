"""The study's ``summary.md`` and ``summary.json``. Tables are drawn by
:func:`mhpo_vl.report.markdown_table`, the one ``mhpo-vl report`` uses. Cells over seeds
read ``mean [min–max]`` (one seed: its value; none: —)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from mhpo_vl.report import DASH, markdown_table
from mhpo_vl.study.metrics import DEFINITIONS

# (key, header, format) of the per-variant and per-run tables
ACCURACY = (
    ("start", "start", ".3f"), ("final", "final", ".3f"), ("best", "best", ".3f"),
    ("gain", "gain", "+.3f"), ("steps_to_10", "steps to +10", ".0f"),
    ("steps_to_20", "steps to +20", ".0f"), ("wall_s", "wall (s)", ".0f"),
)  # fmt: skip
STABILITY = (
    ("ratio_max", "max ratio_max", ".3g"), ("ratio_min", "min ratio_min", ".3g"),
    ("ratio_mean", "mean ratio_mean", ".4f"), ("ratio_out_frac", "ratio out frac", ".3f"),
    ("clip_frac", "clip frac", ".3f"), ("grad_median", "grad median", ".3g"),
    ("grad_max", "grad max", ".3g"), ("grad_spikes", "grad spikes", ".1f"),
    ("skipped_updates", "skipped updates", ".0f"),
)  # fmt: skip
REACHED = ("steps_to_10", "steps_to_20")


def fmt(value: float | None, spec: str) -> str:
    """A number in ``spec``; None as —, non-finite as nan / inf."""
    if value is None:
        return DASH
    if not math.isfinite(value):
        return str(value)
    return format(value, spec)


def spread_text(stat: dict[str, Any], spec: str) -> str:
    """``mean [min–max]``; one value alone; — for none."""
    if not stat["n"]:
        return DASH
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return fmt(stat["mean"], spec)
    return f"{fmt(stat['mean'], spec)} [{fmt(stat['min'], spec)}–{fmt(stat['max'], spec)}]"


def stat_text(var: dict[str, Any], key: str, spec: str) -> str:
    """A per-variant cell; steps-to columns add how many done runs reached it."""
    done = len(var["done"])
    text = spread_text(var["stats"][key], spec)
    if key not in REACHED or not done:
        return text
    reached = var["stats"][key]["n"]
    return f"{text} ({reached}/{done})" if reached else f"not reached (0/{done})"


def flag_text(var: dict[str, Any], key: str) -> str:
    done = len(var["done"])
    return f"{var['flags'][key]}/{done}" if done else DASH


def seeds_text(var: dict[str, Any]) -> str:
    return f"{len(var['done'])}/{len(var['seeds'])}"


def variant_rows(setting: dict[str, Any], columns: Sequence[tuple[str, str, str]],
                 flags: bool) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """The header and rows of a per-variant table of ``columns``."""
    head = ["variant", "seeds done", *(h for _, h, _ in columns)]
    head += ["collapsed", "dip"] if flags else []
    rows = []
    for name, var in setting["variants"].items():
        row = [name, seeds_text(var), *(stat_text(var, k, f) for k, _, f in columns)]
        row += [flag_text(var, "collapsed"), flag_text(var, "dip")] if flags else []
        rows.append(row)
    return head, rows


def state_text(var: dict[str, Any], seed: str, steps: int) -> str:
    """A cell's state as one phrase."""
    if seed in var["runs"]:
        return "done"
    if seed in var["halted"]:
        return f"halted at step {var['halted'][seed]}"
    if seed in var["partial"]:
        p = var["partial"][seed]
        ckpt = f", checkpoint-{p['checkpoint']}" if p["checkpoint"] else ""
        return f"partial: step {p['logged']}/{steps}{ckpt}"
    return "not started"


def run_cell(run: dict[str, Any] | None, key: str, spec: str) -> str:
    """One number of a run (— while not done; a target never reached says so)."""
    if run is None:
        return DASH
    if key in REACHED and run[key] is None:
        return "not reached"
    return fmt(run[key], spec)


def run_rows(setting: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per cell of the setting: its state and, when done, its numbers."""
    columns = (*ACCURACY, *STABILITY[:2], *STABILITY[5:7], ("grad_spikes", "grad spikes", "d"))
    head = ["variant", "seed", "state", *(h for _, h, _ in columns), "collapsed", "dip"]
    steps = max(setting["steps"])
    rows = []
    for name, var in setting["variants"].items():
        for seed in map(str, var["seeds"]):
            run = var["runs"].get(seed)
            cells = [run_cell(run, k, f) for k, _, f in columns]
            flags = [("yes" if run[k] else "no") if run else DASH for k in ("collapsed", "dip")]
            rows.append([name, seed, state_text(var, seed, steps), *cells, *flags])
    return head, rows


def overview_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per variant, one column per setting: final accuracy, seeds, collapses."""
    names = list(summary["settings"])
    variants = dict.fromkeys(v for s in summary["settings"].values() for v in s["variants"])
    rows = []
    for vname in variants:
        row = [vname]
        for name in names:
            var = summary["settings"][name]["variants"].get(vname)
            if var is None:
                row.append(DASH)
                continue
            acc = spread_text(var["stats"]["final"], ".3f")
            extra = f", {var['flags']['collapsed']} collapsed" if var["done"] else ""
            extra += f", {len(var['halted'])} halted" if var["halted"] else ""
            row.append(f"{acc} ({seeds_text(var)} seeds{extra})")
        rows.append(row)
    return ["variant", *names], rows


def progress_lines(counts: dict[str, int]) -> list[str]:
    """The first thing the summary says: how much of the plan is done."""
    c = counts
    rest = (f"{c['halted']} halted, {c['partial']} partial (started, not finished), "
            f"{c['not_started']} not started")  # fmt: skip
    if c["done"] == c["planned"]:
        return [f"**Complete: {c['done']} of {c['planned']} planned runs done.**"]
    if c["done"] == 0:
        return [f"**No run done yet: 0 of {c['planned']} planned** ({rest}). "
                "The tables fill in as runs finish."]  # fmt: skip
    return [
        f"**Partial: {c['done']} of {c['planned']} planned runs done** ({rest}). Only "
        "done runs are aggregated; `seeds done` says over how many of the planned seeds "
        "each row is."
    ]


def plan_lines(summary: dict[str, Any]) -> list[str]:
    """The settings and variants as data: what each one overrides."""

    def over(items: Sequence[str]) -> str:
        return " ".join(f"`{o}`" for o in items) or "none"

    lines = ["## The plan", "", "Settings:"]
    lines += [f"- `{n}`: {s['description']}; overrides: {over(s['overrides'])}"
              for n, s in summary["settings"].items()]  # fmt: skip
    variants = {v: d for s in summary["settings"].values() for v, d in s["variants"].items()}
    lines += ["", "Variants:"]
    lines += [f"- `{n}`: {v['description']}; `{v['recipe']}`, overrides: {over(v['overrides'])}"
              for n, v in variants.items()]  # fmt: skip
    return lines


def setting_lines(name: str, setting: dict[str, Any]) -> list[str]:
    """A setting's section: per-variant accuracy and stability, every cell, plots."""
    steps = "/".join(map(str, setting["steps"]))
    lines = [f"## {name}: {setting['description']}", "", f"{steps} steps per run.", ""]
    if any(var["done"] for var in setting["variants"].values()):
        lines += ["Accuracy, per variant (mean [min–max] over done seeds):", ""]
        lines += markdown_table(*variant_rows(setting, ACCURACY, flags=True))
        lines += ["", "Stability, per variant:", ""]
        lines += markdown_table(*variant_rows(setting, STABILITY, flags=False))
        lines += ["", f"![accuracy, {name}](accuracy_{name}.png)", "",
                  f"![stability, {name}](stability_{name}.png)", ""]  # fmt: skip
    else:
        lines += ["No run of this setting is done yet.", ""]
    lines += ["Every run:", "", *markdown_table(*run_rows(setting))]
    return lines


def render_markdown(summary: dict[str, Any], meta: dict[str, str]) -> str:
    """``summary.md``."""
    trained = ", ".join(
        f"`{commit}` ({n} run{'s' if n != 1 else ''})"
        for commit, n in summary["trained_at"].items()
    )
    lines = [
        "# Tiny study: MHPO against the baselines on CPU",
        "",
        f"Produced by `{meta['command']}` at commit `{meta['commit']}` on {meta['date']}.",
        "",
        *progress_lines(summary["counts"]),
        "",
        f"Done runs trained at: {trained or 'none yet'} (each run's "
        "`study_attempts.jsonl`; a run resumed across commits counts under each).",
        "",
        "Each run is `python -m mhpo_vl train <variant's recipe>` (a `recipes/tiny/` vision "
        "recipe: the embedded tiny Qwen2.5-VL on the synthetic shapes task) with the "
        "study's overrides (`seed=<k>`, `trainer.output_dir`, `trainer.save_every` = the "
        "recipe's `eval.every`, `trainer.keep_last=1`, `trainer.progress_bar=false`), then "
        "the variant's and the setting's; steps, evaluation, learning rate and schedule "
        "are the recipe's. The seed is the RL seed (sampling, data and minibatch order): "
        "every run starts from the same warm-started model and is scored on the same "
        "held-out problems (greedy). See `mhpo_vl/study/`.",
        "",
        "## Definitions",
        "",
        *(f"- *{k}*: {v}" for k, v in DEFINITIONS.items()),
        "- *seeds done*: done / planned seeds of the row; only done runs are aggregated",
        "",
        *plan_lines(summary),
        "",
        "## Overview: final held-out accuracy, mean [min–max] over done seeds",
        "",
        *markdown_table(*overview_rows(summary)),
    ]
    for name, setting in summary["settings"].items():
        lines += ["", *setting_lines(name, setting)]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """Non-finite floats as the strings the trainer writes; tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def render_json(summary: dict[str, Any], meta: dict[str, str]) -> str:
    """``summary.json``: the meta data, the definitions and every number."""
    data = {**meta, "definitions": DEFINITIONS, **summary}
    return json.dumps(json_safe(data), indent=1) + "\n"
