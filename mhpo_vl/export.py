"""``mhpo-vl export CHECKPOINT --out DIR``: a checkpoint as a stock Hugging Face model.

The output is what ``from_pretrained``, ``mhpo-vl eval`` and vLLM load: safetensors
weights (one file, or several with their index), ``config.json``,
``generation_config.json`` and the processor or tokenizer files. No trainer state.

A checkpoint written under ``parallel.strategy: ddp`` already holds its weights in that
format; they are copied. One written under ``fsdp`` holds them sharded
(``torch.distributed.checkpoint``, one file per process): they are read one tensor at a
time, on the CPU, in one process, and written file by file, so the export needs memory
for one file's tensors (5 GB), not the model. The names are the ones the weights were
loaded under (older Qwen-VL checkpoints say ``visual.*``), as ``save_pretrained``
writes them; a tied LM head is written once, under the embedding's name.

:func:`export_model` (the command) takes a run directory (its latest complete
checkpoint) or a checkpoint, refuses weights that are not finite, makes sure the chat
template travels (``chat_template.jinja``/``.json`` or the tokenizer's), checks what
vLLM 0.33.0's loader reads, and adds the model card (:mod:`mhpo_vl.modelcard`) and
training curves. :func:`push_folder` uploads the result to the Hub in one commit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import checkpoint, modelcard, provenance
from mhpo_vl.errors import UserError

NOT_EXPORTED = {checkpoint.STATE_FILE, checkpoint.SHARDED_DIR, "model.safetensors.index.json"}
"""What stays behind: the trainer state, the sharded state, and old weight files."""


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model*.safetensors"))


def has_hf_weights(folder: Path) -> bool:
    return bool(_weight_files(folder))


def check_checkpoint(ckpt: Path) -> None:
    """A :class:`UserError` unless ``ckpt`` is a checkpoint folder with weights."""
    if not (ckpt / "config.json").is_file():
        raise UserError(f"{ckpt}: not a checkpoint folder (no config.json)")
    if not checkpoint.is_sharded(ckpt) and not has_hf_weights(ckpt):
        raise UserError(f"{ckpt}: holds neither Hugging Face weights nor a sharded state")


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write ``ckpt``'s model as a stock Hugging Face model folder ``out``; returns it."""
    ckpt, out = Path(ckpt), Path(out)
    check_checkpoint(ckpt)
    if out.resolve() == ckpt.resolve():
        raise UserError(f"--out {out}: must differ from the checkpoint folder")
    out.mkdir(parents=True, exist_ok=True)
    for old in _weight_files(out) + [out / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)  # files of an earlier export
    for item in ckpt.iterdir():
        if item.is_file() and item.name not in NOT_EXPORTED and item not in _weight_files(ckpt):
            shutil.copy2(item, out / item.name)
    if has_hf_weights(ckpt):  # preferred: already gathered when training ended
        for item in _weight_files(ckpt) + [ckpt / "model.safetensors.index.json"]:
            if item.exists():
                shutil.copy2(item, out / item.name)
    else:
        write_from_sharded(ckpt, out)
    return out


def write_from_sharded(ckpt: Path, out: Path) -> None:
    """The weights of ``ckpt``'s sharded state, one tensor at a time, in HF format."""
    from torch.distributed.checkpoint import FileSystemReader

    from mhpo_vl.models.policy import keep_weight_names, load_policy
    from mhpo_vl.parallel.fsdp import hf_names, hf_writer

    path = ckpt / checkpoint.SHARDED_DIR
    reader = FileSystemReader(str(path))
    stored = reader.read_metadata().state_dict_metadata
    model = load_policy(str(ckpt), device="meta").model  # names and ties, no weights
    keep_weight_names(model, checkpoint.load_state(ckpt).get("weight_names"))
    state = model.state_dict()
    missing = [n for n in state if f"model.{n}" not in stored]
    if missing:
        raise UserError(f"{ckpt}: the sharded state lacks {', '.join(missing[:3])}")
    names = hf_names(model, state)
    sizes = [(n, _nbytes(stored[f"model.{n}"])) for n in names]
    writer = hf_writer(model, out, sizes)
    for name in names:
        tensor = _read(path, f"model.{name}", stored[f"model.{name}"])
        if not _finite(tensor):
            for item in _weight_files(out):  # the files already written
                item.unlink(missing_ok=True)
            raise UserError(_not_finite(ckpt, name, checkpoint.SHARDED_DIR))
        writer.add(name, tensor)
    writer.finish()


def _nbytes(meta: Any) -> int:
    return meta.size.numel() * torch.empty((), dtype=meta.properties.dtype).element_size()


def _read(path: Path, key: str, meta: Any) -> torch.Tensor:
    """One tensor of a ``torch.distributed.checkpoint`` folder, whole, on the CPU."""
    import torch.distributed.checkpoint as dcp

    tensor = torch.empty(meta.size, dtype=meta.properties.dtype)
    dcp.load({key: tensor}, checkpoint_id=str(path), no_dist=True)
    return tensor


# ---------------------------------------------------------------- finite weights


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _not_finite(ckpt: Path, name: str, where: str) -> str:
    return (
        f"{ckpt}: tensor {name} ({where}) holds NaN or Inf values; not exported (export an "
        "earlier checkpoint of the run)"
    )


def check_finite(ckpt: Path) -> None:
    """A :class:`UserError` naming the first tensor of ``ckpt``'s HF weights that holds a
    NaN or Inf (read one tensor at a time)."""
    from safetensors import safe_open

    for file in _weight_files(ckpt):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if not _finite(fh.get_tensor(name)):
                    raise UserError(_not_finite(ckpt, name, file.name))


# ---------------------------------------------------------------- run or checkpoint


def resolve_source(path: str | Path) -> tuple[Path, Path | None, str]:
    """``(checkpoint, run directory or None, how it was chosen)`` for ``path``: a
    checkpoint folder (its run: the parent, where that is a run directory), or a run
    directory (its latest complete checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: not a checkpoint folder or run directory (no such folder); give "
            "OUTPUT_DIR of a run or one of its checkpoint-<step>/ folders"
        )
    if (path / "config.json").is_file():
        return path, (path.parent if _is_run_dir(path.parent) else None), "the checkpoint given"
    if _is_run_dir(path):
        latest = checkpoint.latest_checkpoint(path)
        if latest is None:
            raise UserError(
                f"{path}: a run directory without a complete checkpoint-<step>/ (one with "
                f"{checkpoint.STATE_FILE}); let the run save one (trainer.save_every) or "
                "give a checkpoint folder"
            )
        return latest, path, f"the latest complete checkpoint of {path}"
    raise UserError(
        f"{path}: not a checkpoint folder (no config.json) or run directory (no "
        "metrics.jsonl, config.yaml or checkpoint-<step>/)"
    )


def _is_run_dir(path: Path) -> bool:
    return (
        (path / "metrics.jsonl").is_file()
        or (path / "config.yaml").is_file()
        or bool(checkpoint.list_checkpoints(path))
    )


def _step(ckpt: Path) -> int | None:
    m = checkpoint.CKPT_RE.match(ckpt.name)
    return int(m.group(1)) if m else None


def _recipe_text(ckpt: Path, run_dir: Path | None) -> str | None:
    """The resolved recipe: the checkpoint's own, else the run's ``config.yaml``."""
    from mhpo_vl.training.rundir import RECIPE_FILE

    for path in (ckpt / RECIPE_FILE, run_dir / "config.yaml" if run_dir else None):
        if path is not None and path.is_file():
            return path.read_text()
    return None


# ---------------------------------------------------------------- chat template

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def chat_template_file(folder: Path) -> str | None:
    """The file of ``folder`` that holds a chat template: ``chat_template.jinja`` or
    ``.json`` (what processors save), else the tokenizer's or processor's config."""
    for name in TEMPLATE_FILES:
        if (folder / name).is_file():
            return name
    for name in ("tokenizer_config.json", "processor_config.json"):
        try:
            if json.loads((folder / name).read_text()).get("chat_template"):
                return name
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _base_template(base: str | None) -> Path | None:
    """A chat template file of the base model: its local folder, or the Hugging Face
    cache (never the network)."""
    if not base or base.startswith(modelcard.EMBEDDED_PREFIX):
        return None
    for name in TEMPLATE_FILES:
        if Path(base).is_dir():
            found: Any = Path(base) / name
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(base, name)
            except Exception:  # not a valid repo id
                found = None
        if isinstance(found, str | Path) and Path(found).is_file():
            return Path(found)
    return None


# ---------------------------------------------------------------- vLLM

# The architectures mhpo_vl trains that vLLM 0.33.0 serves, read from vllm 0.33.0's
# vllm/model_executor/models/registry.py (_TEXT_GENERATION_MODELS, _MULTIMODAL_MODELS),
# each with the weight-name prefixes its loader maps onto its modules (hf_to_vllm_mapper
# in qwen2.py, qwen3.py, qwen2_vl.py, qwen2_5_vl.py, qwen3_vl.py of the same release).
VLLM_VERSION = "0.33.0"
VLLM_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "Qwen2ForCausalLM": ("model.", "lm_head."),
    "Qwen3ForCausalLM": ("model.", "lm_head."),
    "Qwen2VLForConditionalGeneration": ("model.", "visual.", "lm_head."),
    "Qwen2_5_VLForConditionalGeneration": ("model.", "visual.", "lm_head."),
    "Qwen3VLForConditionalGeneration": (
        "model.language_model.",
        "model.visual.",
        "visual.",
        "lm_head.",
    ),  # fmt: skip
}


def weight_names(folder: Path) -> list[str]:
    """The tensor names of ``folder``'s safetensors files (headers only)."""
    from safetensors import safe_open

    names: list[str] = []
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            names.extend(fh.keys())
    return names


def vllm_problems(folder: Path) -> list[str]:
    """What would keep vLLM 0.33.0 from serving ``folder`` as is (empty: nothing we know
    of): an architecture it does not register, weight names its loader does not map,
    missing tokenizer or processor files."""
    config = json.loads((folder / "config.json").read_text())
    archs = config.get("architectures") or []
    problems = [
        f"config.json architectures {a!r} is not one vLLM {VLLM_VERSION} serves "
        f"(known: {', '.join(VLLM_ARCHITECTURES)})"
        for a in archs
        if a not in VLLM_ARCHITECTURES
    ]
    if not archs:
        problems.append("config.json names no architectures")
    prefixes = tuple(p for a in archs for p in VLLM_ARCHITECTURES.get(a, ()))
    if prefixes:
        odd = [n for n in weight_names(folder) if not n.startswith(prefixes)]
        if odd:
            problems.append(f"weight names vLLM does not map: {', '.join(odd[:3])}")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        problems.append("no tokenizer.json (or vocab.json)")
    if modelcard.is_vision(config) and not any(
        (folder / n).is_file() for n in ("processor_config.json", "preprocessor_config.json")
    ):
        problems.append("no processor_config.json or preprocessor_config.json")
    return problems


# ---------------------------------------------------------------- the command


@dataclass
class Exported:
    """What :func:`export_model` did."""

    out: Path
    checkpoint: Path
    chosen: str  # how the checkpoint was chosen
    step: int | None
    files: list[str] = field(default_factory=list)
    vllm_problems: list[str] = field(default_factory=list)


def export_model(source: str | Path, out: str | Path) -> Exported:
    """Export ``source`` (a run directory or a checkpoint folder) to ``out``: weights,
    configs, processor or tokenizer with the chat template, ``README.md`` model card and
    ``training_curves.png``. Nothing is written when the weights are not finite or the
    chat template cannot be found."""
    from mhpo_vl.tracking import read_metrics

    ckpt, run_dir, chosen = resolve_source(source)
    out = Path(out)
    check_checkpoint(ckpt)
    check_finite(ckpt)  # the HF weights; sharded ones are checked as they are read
    recipe_text = _recipe_text(ckpt, run_dir)
    inputs = modelcard.CardInputs(
        config={}, checkpoint=ckpt.name, step=_step(ckpt), recipe_text=recipe_text
    )
    base, template = inputs.model_path, None
    if not chat_template_file(ckpt):
        template = _base_template(base)
        if template is None:
            where = f"in the base model {base} on this machine" if base else "a recipe names"
            raise UserError(
                f"{ckpt}: no chat template (chat_template.jinja, chat_template.json or the "
                f"tokenizer's), nor one {where}; copy the base model's chat_template.jinja "
                "into the checkpoint"
            )
    export_checkpoint(ckpt, out)
    if template is not None:
        shutil.copy2(template, out / template.name)
    inputs.config = json.loads((out / "config.json").read_text())
    if run_dir is not None:
        inputs.run_info = provenance.read_run_info(run_dir)
    if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        step = inputs.step  # the curves and eval table stop at the exported step
        records = read_metrics(run_dir)
        inputs.records = [r for r in records if step is None or r.get("step", 0) <= step]
    (out / modelcard.CURVES_FILE).unlink(missing_ok=True)  # an earlier export's
    if modelcard.write_curves(inputs.records, out / modelcard.CURVES_FILE):
        inputs.curves = modelcard.CURVES_FILE
    (out / modelcard.CARD_FILE).write_text(modelcard.render_card(inputs))
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return Exported(out, ckpt, chosen, inputs.step, files, vllm_problems(out))


# ---------------------------------------------------------------- the Hub

NO_TOKEN = "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"


def require_hub_token(repo: str) -> None:
    """Before any work: a token to push with and a well-formed repo id, else one line."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise UserError(f"--push-to-hub {repo}: not a repo id ({exc})") from None
    if not get_token():
        raise UserError(NO_TOKEN)
    if constants.is_offline_mode():
        raise UserError("--push-to-hub: HF_HUB_OFFLINE is set; unset it to reach the Hub")


def upload_files(folder: Path) -> list[str]:
    """The paths, relative to ``folder``, that a push uploads: every file, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def push_folder(folder: str | Path, repo: str, private: bool = False, api: Any = None) -> str:
    """Create ``repo`` on the Hub (private if asked; an existing one is reused) and
    upload every file of ``folder`` in one commit; returns the repo's URL."""
    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder, api = Path(folder), api or HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
            for name in upload_files(folder)
        ]
        api.create_commit(
            url.repo_id, operations=operations, repo_type="model",
            commit_message=f"mhpo-vl export ({folder.name})",
        )  # fmt: skip
    except (HfHubHTTPError, httpx.HTTPError, ConnectionError) as exc:  # offline mode too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--push-to-hub {repo}: {first}; the export in {folder} is complete, push again "
            "once that is fixed"
        ) from None
    return str(url)
