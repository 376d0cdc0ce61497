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
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import checkpoint
from mhpo_vl.errors import UserError

NOT_EXPORTED = {checkpoint.STATE_FILE, checkpoint.SHARDED_DIR, "model.safetensors.index.json"}
"""What stays behind: the trainer state, the sharded state, and old weight files."""


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model*.safetensors"))


def has_hf_weights(folder: Path) -> bool:
    return bool(_weight_files(folder))


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write ``ckpt``'s model as a stock Hugging Face model folder ``out``; returns it."""
    ckpt, out = Path(ckpt), Path(out)
    if not (ckpt / "config.json").is_file():
        raise UserError(f"{ckpt}: not a checkpoint folder (no config.json)")
    sharded = checkpoint.is_sharded(ckpt)
    if not sharded and not has_hf_weights(ckpt):
        raise UserError(f"{ckpt}: holds neither Hugging Face weights nor a sharded state")
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
        writer.add(name, _read(path, f"model.{name}", stored[f"model.{name}"]))
    writer.finish()


def _nbytes(meta: Any) -> int:
    return meta.size.numel() * torch.empty((), dtype=meta.properties.dtype).element_size()


def _read(path: Path, key: str, meta: Any) -> torch.Tensor:
    """One tensor of a ``torch.distributed.checkpoint`` folder, whole, on the CPU."""
    import torch.distributed.checkpoint as dcp

    tensor = torch.empty(meta.size, dtype=meta.properties.dtype)
    dcp.load({key: tensor}, checkpoint_id=str(path), no_dist=True)
    return tensor
