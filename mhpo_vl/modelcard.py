"""The model card (``README.md``) and training curves of an exported model.

A Hugging Face model card: YAML front matter (``library_name``, ``base_model`` when the
recipe's ``model.path`` is a Hub id, ``pipeline_tag``, ``tags``, ``license`` where
known), then the base model, the algorithm and its parameters, the training length, the
mhpo_vl commit, the eval table at the exported step with how it was scored, the
training curves (``training_curves.png``, drawn by :mod:`mhpo_vl.plotting` from the
run's ``metrics.jsonl`` up to that step) and the resolved recipe, embedded verbatim.
Everything is read from the files a run writes; a piece that is missing (a checkpoint
outside its run, a run from before ``run_info.json``) is said to be missing.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl import provenance
from mhpo_vl.recipe_yaml import dotted_get as _get

CARD_FILE = "README.md"
CURVES_FILE = "training_curves.png"
EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Licenses of the recipes' base models, as their Hub model cards declare them (an id not
# listed here gets no license line unless its card is in the local Hugging Face cache).
KNOWN_LICENSES = {
    "Qwen/Qwen2-VL-2B-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-VL-7B-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-7B-Instruct": "apache-2.0",
    "Qwen/Qwen3-4B-Base": "apache-2.0",
    "Qwen/Qwen3-VL-4B-Instruct": "apache-2.0",
    "Qwen/Qwen3-VL-8B-Instruct": "apache-2.0",
}
MHPO_VL_LICENSE = "apache-2.0"  # pyproject.toml: the embedded models are built by mhpo_vl


@dataclass
class CardInputs:
    """What the card is written from (see :func:`render_card`)."""

    config: dict[str, Any]  # the model's config.json
    checkpoint: str  # e.g. "checkpoint-350"
    step: int | None
    recipe_text: str | None = None  # the resolved recipe, verbatim
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics up to `step`
    run_info: dict[str, Any] | None = None
    curves: str | None = None  # file name of the curves PNG, next to the card

    @property
    def recipe(self) -> dict[str, Any]:
        loaded = yaml.safe_load(self.recipe_text) if self.recipe_text else None
        return loaded if isinstance(loaded, dict) else {}

    @property
    def model_path(self) -> str | None:
        """The recipe's ``model.path``: the base model."""
        path = _get(self.recipe, "model.path")
        return path if isinstance(path, str) else None


def is_vision(config: dict[str, Any]) -> bool:
    """A vision-language model (its config has a vision tower)."""
    return "vision_config" in config


def pipeline_tag(config: dict[str, Any]) -> str:
    return "image-text-to-text" if is_vision(config) else "text-generation"


def hub_base_model(path: str | None) -> str | None:
    """``path`` when it names a Hub model (``org/name``, not a local folder), else None."""
    if not path or path.startswith(EMBEDDED_PREFIX) or Path(path).exists():
        return None
    return path if HUB_ID.match(path) else None


def _card_license(card: Path) -> str | None:
    """The ``license`` of a model card's front matter, if it has one."""
    try:
        text = card.read_text()
    except OSError:
        return None
    meta = front_matter(text)
    value = meta.get("license") if meta else None
    return value if isinstance(value, str) else None


def base_license(path: str | None) -> str | None:
    """The base model's license: mhpo_vl's for an embedded model; else its own card's
    (a local folder, or the Hugging Face cache, never the network), else
    :data:`KNOWN_LICENSES`; None where unknown."""
    if not path:
        return None
    if path.startswith(EMBEDDED_PREFIX):
        return MHPO_VL_LICENSE
    if Path(path).is_dir():
        return _card_license(Path(path) / CARD_FILE)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, CARD_FILE)
    except Exception:  # an id the cache lookup rejects: no card to read
        cached = None
    found = _card_license(Path(cached)) if isinstance(cached, str) else None
    return found or KNOWN_LICENSES.get(path)


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a markdown text (``---`` ... ``---``), or None."""
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if not m:
        return None
    meta = yaml.safe_load(m.group(1))
    return meta if isinstance(meta, dict) else None


def card_metadata(inputs: CardInputs) -> dict[str, Any]:
    """The front matter's fields, in the order the Hub shows them."""
    path = _get(inputs.recipe, "model.path")
    loss = _get(inputs.recipe, "algorithm.loss.name")
    meta: dict[str, Any] = {"library_name": "transformers"}
    base = hub_base_model(path)
    if base:
        meta["base_model"] = base
    meta["pipeline_tag"] = pipeline_tag(inputs.config)
    meta["tags"] = ["mhpo_vl", "reinforcement-learning"] + ([str(loss)] if loss else [])
    lic = base_license(path)
    if lic:
        meta["license"] = lic
    return meta


# ---------------------------------------------------------------- eval table


def eval_at(records: list[dict[str, Any]], step: int | None) -> tuple[int | None, dict[str, float]]:
    """``(step, {eval/* metric: value})`` of the last eval at or before ``step`` (records
    of one step merged, later ones winning); ``(None, {})`` where there is none."""
    found: dict[int, dict[str, float]] = {}
    for rec in records:
        s = rec.get("step")
        if not isinstance(s, int) or (step is not None and s > step):
            continue
        for key, value in rec.items():
            if key.startswith("eval/") and isinstance(value, int | float):
                found.setdefault(s, {})[key] = float(value)
    if not found:
        return None, {}
    last = max(found)
    return last, found[last]


def _eval_order(key: str) -> tuple[int, str]:
    """Held-out overall, held-out per task, then each benchmark (overall first)."""
    if key == "eval/accuracy":
        return 0, ""
    if key.startswith("eval/accuracy/"):
        return 1, key
    return 2, key


def metric_label(key: str) -> str:
    """``eval/accuracy`` -> held-out accuracy; ``eval/accuracy/T`` -> task T; ``eval/B/
    accuracy[/T]`` -> benchmark B [task T]."""
    parts = key.split("/")[1:]
    if parts[0] == "accuracy":
        return "held-out" + (f", task {'/'.join(parts[1:])}" if len(parts) > 1 else "")
    bench, rest = parts[0], parts[2:] if parts[1:2] == ["accuracy"] else parts[1:]
    return bench + (f", task {'/'.join(rest)}" if rest else "")


def eval_table(inputs: CardInputs) -> tuple[int | None, str]:
    """``(eval step, markdown table)``: every ``eval/*`` metric at the exported step
    (or the last eval before it) beside its value at step 0 where the run evaluated
    at the start."""
    at, values = eval_at(inputs.records, inputs.step)
    if at is None:
        return None, ""
    start_step, start = eval_at(inputs.records, 0)
    show_start = start_step == 0 and at != 0
    head = ["metric", "key"] + (["step 0 (start)"] if show_start else []) + [f"step {at}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(values, key=_eval_order):
        cells = [metric_label(key), f"`{key}`"]
        if show_start:
            cells.append(f"{start[key]:.4f}" if key in start else "—")
        cells.append(f"{values[key]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return at, "\n".join(lines)


def scoring_text(recipe: dict[str, Any]) -> str:
    """How the eval was scored, from the recipe's ``eval`` and ``data.eval`` sections."""
    temp = _get(recipe, "eval.temperature", 0.0) or 0.0
    decoding = "greedy decoding" if temp == 0 else f"sampling at temperature {temp}"
    max_new = _get(recipe, "eval.max_new_tokens")
    max_src = "eval.max_new_tokens"
    if max_new is None:
        max_new, max_src = _get(recipe, "rollout.max_new_tokens"), "rollout.max_new_tokens"
    size = _get(recipe, "eval.size")
    spec = _get(recipe, "data.eval")
    parts = [
        f"- decoding: {decoding}, one completion per problem, scored 0/1 against the "
        "reference answer (mhpo_vl's `accuracy` check)",
        f"- max_new_tokens: {max_new} ({max_src})",
        f"- eval size: {'every problem' if size is None else f'the first {size} problems'} "
        "(`eval.size`) of each eval set",
    ]
    if isinstance(spec, dict):
        cap = f", data.eval.size {spec['size']}" if spec.get("size") is not None else ""
        parts.append(f"- held-out set: `{spec.get('source')}`, split `{spec.get('split')}`{cap}")
    benches = _get(recipe, "eval.benchmarks") or []
    if benches:
        parts.append(
            f"- benchmarks: {', '.join(f'`{b}`' for b in benches)} (each scored by its own scorer, as `mhpo-vl eval` scores it)"
        )
    template = _get(recipe, "data.template")
    if template:
        system = _get(recipe, "data.system_prompt")
        parts.append(
            f"- prompt template: `{template}`"
            + (f", system prompt {system!r}" if system else " (the chat template's system prompt)")
        )
    return "\n".join(parts)


# ---------------------------------------------------------------- other sections


def loss_parameters(loss: dict[str, Any]) -> dict[str, Any]:
    """The loss's parameters with its defaults filled in (the recipe's where it set
    them); only the recipe's where the loss is not registered here."""
    from mhpo_vl.algorithms.base import POLICY_LOSSES

    params = {k: v for k, v in loss.items() if k != "name"}
    try:
        return dict(POLICY_LOSSES.get(str(loss.get("name"))).resolve(params))
    except Exception:  # a loss from another version of mhpo_vl: what the recipe says
        return params


def base_model_text(path: str | None, config: dict[str, Any]) -> str:
    arch = ", ".join(config.get("architectures") or []) or config.get("model_type", "?")
    if not path:
        return f"Not recorded (architecture `{arch}`)."
    if path.startswith(EMBEDDED_PREFIX):
        return (
            f"`{path}`: mhpo_vl's embedded model, a tiny model of the real Qwen "
            f"architecture (`{arch}`) built offline by mhpo_vl and warm-started on its "
            "synthetic task. It is not a Hugging Face Hub model, so this card names no "
            "`base_model`."
        )
    base = hub_base_model(path)
    if base:
        return f"[{base}](https://huggingface.co/{base}) (`{arch}`)."
    return f"A local model folder, `{path}` (`{arch}`); not a Hub id, so no `base_model`."


def algorithm_text(recipe: dict[str, Any]) -> str:
    loss = _get(recipe, "algorithm.loss") or {}
    if not isinstance(loss, dict) or "name" not in loss:
        return "Not recorded."
    params = loss_parameters(loss)
    shown = ", ".join(f"`{k}={v}`" for k, v in params.items()) or "none"
    rewards = _get(recipe, "rewards") or []
    lines = [
        f"- loss: **{loss['name']}** ({shown})",
        f"- advantage: `{_get(recipe, 'algorithm.advantage')}`, aggregation: "
        f"{_get(recipe, 'algorithm.agg') or 'the loss default'}, KL coefficient "
        f"{_get(recipe, 'algorithm.kl_coef')}",
        "- rewards: "
        + (", ".join(f"`{r.get('name')}` x {r.get('weight')}" for r in rewards) or "none"),
        f"- rollouts: temperature {_get(recipe, 'rollout.temperature')}, top_p "
        f"{_get(recipe, 'rollout.top_p')}, max_new_tokens "
        f"{_get(recipe, 'rollout.max_new_tokens')}, engine `{_get(recipe, 'rollout.engine')}`",
        f"- optimizer: AdamW, lr {_get(recipe, 'optim.lr')}, scheduler "
        f"`{_get(recipe, 'optim.scheduler')}`, max_grad_norm {_get(recipe, 'optim.max_grad_norm')}",
    ]
    for key in ("dynamic_sampling", "overlong"):
        if _get(recipe, f"algorithm.{key}.enabled"):
            lines.append(f"- {key}: {_get(recipe, f'algorithm.{key}')}")
    return "\n".join(lines)


def training_text(inputs: CardInputs) -> str:
    recipe = inputs.recipe
    p = _get(recipe, "trainer.prompts_per_step")
    g = _get(recipe, "rollout.group_size")
    step, max_steps = inputs.step, _get(recipe, "trainer.max_steps")
    lines = [
        f"- steps: {step if step is not None else '?'} (of trainer.max_steps {max_steps}), "
        f"exported from `{inputs.checkpoint}`",
        f"- per step: {p} prompts x group size {g} = "
        f"{p * g if isinstance(p, int) and isinstance(g, int) else '?'} completions, "
        f"{_get(recipe, 'trainer.minibatches')} minibatch(es), "
        f"{_get(recipe, 'trainer.update_epochs')} update epoch(s)",
    ]
    if isinstance(step, int) and isinstance(p, int):
        lines.append(f"- prompts seen: {step * p}")
    lines.append(
        f"- train set: `{_get(recipe, 'data.train.source')}`, split "
        f"`{_get(recipe, 'data.train.split')}`; seed {_get(recipe, 'seed')}"
    )
    lines.append(f"- mhpo_vl: {commit_text(inputs.run_info, step)}")
    return "\n".join(lines)


def commit_text(info: dict[str, Any] | None, step: int | None) -> str:
    """The mhpo_vl commit(s) that trained the steps up to ``step``; "unknown" for runs
    without ``run_info.json``."""
    starts = provenance.commits_up_to(info, step)
    if not starts:
        return (
            "commit unknown (the run predates run_info.json, or the checkpoint is outside its run)"
        )
    said = []
    for s in starts:
        commit = s.get("commit")
        what = f"commit `{commit}`" if commit else "commit unknown (not a git checkout)"
        if s.get("dirty"):
            what += " with uncommitted changes"
        what += f", version {s.get('version')}"
        said.append(
            what if not s.get("start_step") else f"{what} (resumed at step {s['start_step']})"
        )
    return "; ".join(said)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def usage_text(config: dict[str, Any]) -> str:
    if is_vision(config):
        load = (
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            "model = AutoModelForImageTextToText.from_pretrained(PATH)\n"
            "processor = AutoProcessor.from_pretrained(PATH)  # needs torchvision\n"
            'messages = [{"role": "user", "content": [{"type": "image"}, '
            '{"type": "text", "text": "..."}]}]\n'
            "text = processor.apply_chat_template(messages, tokenize=False, "
            "add_generation_prompt=True)\n"
            'inputs = processor(text=[text], images=[image], return_tensors="pt")\n'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\n"
            "tokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            'messages = [{"role": "user", "content": "..."}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
            'return_tensors="pt", return_dict=True)\n'
        )
    load += "out = model.generate(**inputs, max_new_tokens=256)\n"
    return (
        f"```python\n{load}```\n\n"
        "With vLLM (the architecture is one vLLM 0.33.0 registers): "
        "`vllm serve PATH` (PATH: this folder or its Hub id)."
    )


def render_card(inputs: CardInputs) -> str:
    """The whole ``README.md``: front matter, then the sections."""
    recipe = inputs.recipe
    meta = yaml.safe_dump(card_metadata(inputs), sort_keys=False).strip()
    name = recipe.get("name") or "mhpo_vl model"
    loss = _get(recipe, "algorithm.loss.name") or "an RL loss"
    out = [
        f"---\n{meta}\n---\n",
        f"# {name}\n",
        f"Trained with reinforcement learning (**{loss}**) by mhpo_vl and exported by "
        f"`mhpo-vl export` from `{inputs.checkpoint}`.\n",
        f"## Base model\n\n{base_model_text(_get(recipe, 'model.path'), inputs.config)}\n",
        f"## Algorithm\n\n{algorithm_text(recipe)}\n",
        f"## Training\n\n{training_text(inputs)}\n",
        "## Evaluation\n",
    ]
    at, table = eval_table(inputs)
    if at is None:
        out.append("The run logged no eval at or before this step.\n")
    else:
        where = "" if at == inputs.step else f" (the last eval at or before step {inputs.step})"
        out.append(f"At step {at}{where}, scored during training by mhpo_vl:\n")
        out.append(scoring_text(recipe) + "\n")
        out.append(table + "\n")
    if inputs.curves:
        out.append(
            "## Training curves\n\n"
            f"![training curves: reward, held-out accuracy, gradient norm, ratio, entropy, "
            f"length]({inputs.curves})\n"
        )
    out.append(f"## Usage\n\n{usage_text(inputs.config)}\n")
    if inputs.recipe_text:
        fence = _fence(inputs.recipe_text)
        body = inputs.recipe_text.rstrip("\n")
        out.append(
            "## Recipe\n\nThe resolved recipe this checkpoint was trained with "
            f"(`mhpo-vl train` takes it as is):\n\n{fence}yaml\n{body}\n{fence}\n"
        )
    else:
        out.append("## Recipe\n\nNot recorded with this checkpoint.\n")
    return "\n".join(out)


def recipe_block(card: str) -> str | None:
    """The recipe embedded in a card (the ``yaml`` code block under ``## Recipe``)."""
    m = re.search(r"^## Recipe\n.*?^(`{3,})yaml\n(.*?)\n\1$", card, re.S | re.M)
    return m.group(2) + "\n" if m else None


# ---------------------------------------------------------------- curves


def write_curves(records: list[dict[str, Any]], path: Path) -> Path | None:
    """One PNG of every panel :func:`mhpo_vl.plotting.plot_run` draws from ``records``,
    two panels a row; None when there is nothing to draw."""
    import json

    from PIL import Image

    from mhpo_vl.plotting import plot_run

    if not records:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        panels = [Image.open(p).convert("RGB") for p in plot_run(run, run / "plots")]
    if not panels:
        return None
    w, h = max(p.width for p in panels), max(p.height for p in panels)
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    sheet = Image.new("RGB", (w * cols, h * rows), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)
    return path
