"""Write the recipes behind the paper's tables: one recipe per table row.

The tables themselves (the paper's numbers, the benchmarks, the evaluation protocol)
are data in ``eval/paper/<table>.yaml``; each of their rows names the recipe here that
reproduces it. Every table starts from one of the real recipes in ``recipes/<model>/``
and copies all of its settings (model, data, rollout, rewards, optimizer, trainer,
parallel); the rows of one table then differ only in ``name``, ``trainer.output_dir``
and ``algorithm``. Where a table needs something the real recipe does not have (the
paper's benchmarks as ``eval.benchmarks``; Qwen3-4B-Base's 4,096-token responses), the
change is made here, once per table, and stated in each file's header.

    python recipes/paper/make_recipes.py           # (re)write recipes/paper/*.yaml
    python recipes/paper/make_recipes.py --check   # exit 1 if a written file would change

The written files are committed; ``tests/test_paper_tables.py`` checks that they equal
what this script writes, so a change to a base recipe shows up as a test failure until
this script is run again.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "recipes" / "paper"

TEXT_BENCHMARKS = ["math500", "hmmt25", "amc23", "aime25", "aime24"]
"""The paper's text table columns, in its order (our benchmark registry names)."""

VISION_BENCHMARKS = [
    "mathvista_testmini",
    "mathverse_testmini",
    "mathvision_testmini",
    "wemath",
    "logicvista",
    "dynamath",
]
"""Our choice of vision benchmarks: the paper's list is not known to us."""

GRPO = {"name": "grpo", "clip_low": 0.2, "clip_high": 0.2}
DAPO = {"name": "dapo", "clip_low": 0.2, "clip_high": 0.28}
GSPO = {"name": "gspo", "clip_low": 3.0e-4, "clip_high": 4.0e-4}
SAPO = {"name": "sapo", "tau_pos": 1.0, "tau_neg": 1.05}
MHPO = {
    "name": "mhpo",
    "c": 1.5,
    "k_pos": 1.5,
    "lam_pos": 1.0,
    "k_neg": 2.0,
    "lam_neg": 0.8,
    "shift": "softplus",
}


@dataclass
class Row:
    key: str
    label: str
    loss: dict[str, Any]
    about: list[str]  # header lines: what this row's algorithm is
    dapo_extras: bool = False  # dynamic sampling + overlong shaping


@dataclass
class Table:
    key: str
    base: str  # the real recipe whose settings every row copies
    what: str  # one line: model, training set
    benchmarks: list[str]
    rows: list[Row]
    edits: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every row
    choices: list[str] = field(default_factory=list)  # header: where the paper is silent


def _row(key: str, label: str, loss: dict[str, Any], *about: str, dapo: bool = False) -> Row:
    return Row(key, label, loss, list(about), dapo)


BASELINES = {
    "grpo": _row(
        "grpo", "GRPO", GRPO, "GRPO: token-level PPO clip 0.2 / 0.2, seq-mean-token-mean."
    ),
    "dapo": _row(
        "dapo",
        "DAPO",
        DAPO,
        "DAPO: clip-higher 0.2 / 0.28 with token-mean aggregation, dynamic sampling (groups",
        "whose rewards are all equal are dropped and refilled, at most 3 rollout rounds a",
        "step) and overlong shaping over the last quarter of the response budget (penalty",
        "down to -1 at the limit; DAPO's own run used a fifth, 4,096 of 20,480 tokens).",
        dapo=True,
    ),
    "gspo": _row(
        "gspo",
        "GSPO",
        GSPO,
        "GSPO: sequence-level ratio (length-normalised), clip 3e-4 / 4e-4 as in the GSPO paper.",
    ),
    "sapo": _row(
        "sapo",
        "SAPO",
        SAPO,
        "SAPO: soft sigmoid gate instead of a clip, tau 1.0 (A > 0) / 1.05 (A < 0), SAPO's values.",
    ),
    "mhpo": _row(
        "mhpo",
        "MHPO",
        MHPO,
        "MHPO with the paper's defaults: c 1.5, k+ 1.5, lam+ 1.0, k- 2.0, lam- 0.8, softplus shift.",
    ),
}

COMMON_TEXT = [
    "data: MATH's 7,500 training problems, answers in \\boxed{} checked by math-verify. MATH is",
    "  the usual RL set for these models, and MATH500 (a subset of its test split) stays out.",
    "lr 1e-6 constant, no KL, 128 prompts x 8 samples a step, 4 minibatches, 300 steps (about",
    "  5 epochs): usual GRPO-family settings for models of this size, the same for every row.",
    "rollouts: vLLM, with token-level truncated importance sampling (cap 2) for its log-prob",
    "  mismatch with the trainer; our engine's need, not the paper's, and the same for every row.",
    "final eval (scripts/reproduce.py): Avg@32 at temperature 1.0 as the paper; top_p 1.0 and",
    "  the boxed prompt the model was trained with are our choices.",
]

TABLES = [
    Table(
        key="text_qwen2_5_7b",
        base="recipes/qwen2_5_7b_instruct/math_mhpo.yaml",
        what="Qwen2.5-7B-Instruct on MATH (text)",
        benchmarks=TEXT_BENCHMARKS,
        rows=[BASELINES[k] for k in ("grpo", "dapo", "sapo", "mhpo")],
        edits={"eval.benchmarks": TEXT_BENCHMARKS},
        choices=["max response length 2,048 tokens: the paper's.", *COMMON_TEXT],
    ),
    Table(
        key="text_qwen3_4b_base",
        base="recipes/qwen3_4b_base/math_mhpo.yaml",
        what="Qwen3-4B-Base on MATH (text, RL from the base model)",
        benchmarks=TEXT_BENCHMARKS,
        rows=[BASELINES[k] for k in ("grpo", "dapo", "sapo", "gspo", "mhpo")],
        edits={
            "rollout.max_new_tokens": 4096,
            "rollout.engine_args.max_model_len": 5120,
            "eval.max_new_tokens": 4096,
            "trainer.micro_batch_size": 4,
            "eval.benchmarks": TEXT_BENCHMARKS,
        },
        choices=[
            "max response length 4,096 tokens: the paper's (the base recipe has 2,048), so",
            "  max_model_len 5,120 and micro-batches of 4 sequences (the same tokens per",
            "  forward as the base recipe's 8 x 2,048).",
            "columns: the five benchmarks of the Qwen2.5-7B table; the paper gives only averages",
            "  for this model, so which benchmarks it averaged is our assumption.",
            *COMMON_TEXT,
        ],
    ),
    Table(
        key="vision_qwen2_5_vl_7b",
        base="recipes/qwen2_5_vl_7b/geometry3k_mhpo.yaml",
        what="Qwen2.5-VL-7B-Instruct on Geometry3K (vision)",
        benchmarks=VISION_BENCHMARKS,
        rows=[BASELINES[k] for k in ("grpo", "dapo", "sapo", "gspo", "mhpo")],
        edits={"eval.benchmarks": VISION_BENCHMARKS},
        choices=[
            "data: Geometry3K's 2,101 training problems with <think>/<answer> responses and",
            "  0.9 accuracy + 0.1 format reward, as EasyR1's example. The paper's vision",
            "  training set is not known to us; on this set EasyR1's reported held-out accuracy",
            "  (0.37 -> 0.48 GRPO, 0.50 DAPO, 0.54 SAPO) is a scale check for eval/accuracy.",
            "benchmarks: our choice from our registry; the paper's vision list is not known, so",
            "  our averages are not strictly comparable with its 53.0 (MHPO) and 52.3 (DAPO).",
            "lr 1e-6 constant, no KL, 128 prompts x 5 samples a step, 4 minibatches, 150 steps",
            "  (about 9 epochs), 2,048 response tokens; vLLM rollouts with token-level truncated",
            "  importance sampling (cap 2). The same for every row.",
            "final eval (scripts/reproduce.py): Avg@32 at temperature 1.0 (the paper's text",
            "  protocol, assumed for vision too), prompted with the trained <think>/<answer> format.",
        ],
    ),
    Table(
        key="ablations",
        base="recipes/qwen2_5_7b_instruct/math_mhpo.yaml",
        what="MHPO ablations on Qwen2.5-7B-Instruct, MATH (text)",
        benchmarks=TEXT_BENCHMARKS,
        rows=[
            _row(
                "lfm_only",
                "LFM only",
                {"name": "mhpo_lfm_only", "c": 1.5},
                "MHPO without the hazard penalty (zeta = 0): L = -exp(c tanh(d / c)) A, c 1.5.",
            ),
            _row(
                "dhp_only",
                "DHP only",
                {k: v for k, v in MHPO.items() if k != "c"} | {"name": "mhpo_dhp_only"},
                "MHPO without the log-fidelity modulator (psi = log r), the paper's hazard.",
            ),
            _row(
                "symmetric",
                "symmetric DHP",
                {"name": "mhpo_symmetric", "c": 1.5, "k_pos": 1.5, "lam_pos": 1.0},
                "MHPO with one hazard on both sides (k- = k+ = 1.5, lam- = lam+ = 1.0).",
            ),
            _row("c0_5", "c = 0.5", MHPO | {"c": 0.5}, "MHPO with c = 0.5 (1.5 in the main run)."),
            _row("c2_0", "c = 2.0", MHPO | {"c": 2.0}, "MHPO with c = 2.0 (1.5 in the main run)."),
            _row(
                "shift_relu",
                "shift relu",
                MHPO | {"shift": "relu"},
                "MHPO with the relu shift: no penalty on-policy (softplus, the default, gives",
                "every token a survival weight of about 0.27 at r = 1). Not a row of the paper:",
                "our check of how its shift is read.",
            ),
        ],
        edits={"eval.benchmarks": TEXT_BENCHMARKS},
        choices=[
            "everything as recipes/paper/text_qwen2_5_7b_mhpo.yaml, which is also this table's",
            "  c = 1.5 / softplus row; only algorithm.loss differs between the ablation rows.",
            "the paper reports these as a text average on Qwen2.5-7B-Instruct; that it used the",
            "  main table's protocol and benchmarks (Avg@32, 2,048 tokens) is our assumption.",
            *COMMON_TEXT,
        ],
    ),
]

TABLE_BY_KEY = {t.key: t for t in TABLES}


def recipe_path(table: str, row: str) -> str:
    """The repository-relative path of a row's recipe."""
    return f"recipes/paper/{table}_{row}.yaml"


# ------------------------------------------------------------------------------ building


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        node = node[key]
    if last not in node:
        raise KeyError(f"{dotted}: not in the base recipe")
    node[last] = copy.deepcopy(value)


def _base_header(path: Path) -> dict[str, str]:
    """The base recipe's ``Hardware:`` and ``Data:`` header lines (without ``# ``)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*(Hardware|Data): (.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).rstrip()
    if set(found) != {"Hardware", "Data"}:
        raise ValueError(f"{path}: the header lacks a 'Hardware:' or 'Data:' line")
    return found


def build(table: Table, row: Row) -> dict[str, Any]:
    """The recipe tree of one row: the base recipe, the table's edits, the row's algorithm."""
    base = yaml.safe_load((ROOT / table.base).read_text(encoding="utf-8"))
    if base["algorithm"]["loss"]["name"] != "mhpo":
        raise ValueError(f"{table.base}: expected an MHPO base recipe")
    tree = copy.deepcopy(base)
    name = f"paper_{table.key}_{row.key}"
    tree["name"] = name
    tree["trainer"]["output_dir"] = f"runs/{name}"
    for dotted, value in table.edits.items():
        _set(tree, dotted, value)
    algorithm: dict[str, Any] = {}
    for key, value in base["algorithm"].items():
        algorithm[key] = copy.deepcopy(row.loss) if key == "loss" else value
        if key == "kl_coef" and row.dapo_extras:
            algorithm["dynamic_sampling"] = {"enabled": True, "max_tries": 3}
            buffer = tree["rollout"]["max_new_tokens"] // 4
            algorithm["overlong"] = {"enabled": True, "buffer": buffer, "factor": 1.0}
    tree["algorithm"] = algorithm
    return tree


def header(table: Table, row: Row, tree: dict[str, Any]) -> list[str]:
    rel = recipe_path(table.key, row.key)
    base = _base_header(ROOT / table.base)
    n = int(re.match(r"(\d+)x", base["Hardware"]).group(1))
    strategy = {"fsdp": "FSDP2 (fully_shard)", "ddp": "DDP"}[tree["parallel"]["strategy"]]
    bench = ", ".join(table.benchmarks)
    lines = [
        f"Paper table {table.key}, row {row.label} (eval/paper/{table.key}.yaml):",
        *textwrap.wrap(f"{table.what}, then Avg@32 on {bench}.", 86),
        *row.about,
        f"Written by recipes/paper/make_recipes.py from {table.base},",
        "whose settings it copies (that file's comments explain them); the rows of this",
        "table differ only in name, trainer.output_dir and algorithm. Edit the script, not",
        "this file.",
        "",
        f"Hardware: {base['Hardware']}",
        f"Data: {base['Data']}",
        f"Launch: torchrun --nproc-per-node {n} -m mhpo_vl train {rel}",
        f"    or: accelerate launch --num_processes {n} -m mhpo_vl train {rel}",
        f"Parallel: {strategy}, as in the base recipe.",
        f"Train, then evaluate: python scripts/reproduce.py {table.key} --rows {row.key}",
        "",
        "Where the paper is silent (its training set, learning rate, batch and group sizes",
        "are not known to us), the choices and why:",
        *(f"  {line}" for line in table.choices),
    ]
    return [f"# {line}".rstrip() for line in lines]


# ------------------------------------------------------------------------------ writing

WIDTH = 100


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # YAML 1.1 floats need a dot: 1e-06 -> 1.0e-6
            mantissa, exp = text.split("e")
            mantissa = mantissa if "." in mantissa else mantissa + ".0"
            text = f"{mantissa}e{'-' if int(exp) < 0 else '+'}{abs(int(exp))}"
        return text
    text = str(value)
    plain = yaml.safe_load(text) == text if text else False
    if plain and not re.search(r"[,\[\]{}#:&*!|>'\"%@`]", text):
        return text
    return json.dumps(text)


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _entries(value: dict[str, Any], indent: str) -> list[str]:
    """One ``key: value`` line per entry, a mapping too long for one line as a block."""
    lines = []
    for k, v in value.items():
        line = f"{indent}{k}: {_flow(v)}"
        if isinstance(v, dict) and len(line) > WIDTH:
            lines += [f"{indent}{k}:", *_entries(v, indent + "  ")]
        else:
            lines.append(line)
    return lines


def dump(tree: dict[str, Any]) -> list[str]:
    """Uniform YAML: top-level sections in block style, one key a line, anything deeper
    in flow style (unless its line would pass WIDTH)."""
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += _entries(value, "  ")
        elif isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"  - {_flow(v)}" for v in value]
        else:
            lines.append(f"{key}: {_scalar(value)}")
    return lines


def render(table: Table, row: Row) -> str:
    tree = build(table, row)
    return "\n".join(header(table, row, tree) + dump(tree)) + "\n"


def expected_files() -> dict[Path, str]:
    """Every recipe this script writes: path -> text."""
    return {ROOT / recipe_path(t.key, r.key): render(t, r) for t in TABLES for r in t.rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on a diff")
    args = parser.parse_args(argv)
    files = expected_files()
    stale = sorted(p for p in HERE.glob("*.yaml") if p not in files)
    changed = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in changed + stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if changed or stale else 0
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    for path, text in files.items():
        if path in changed:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
