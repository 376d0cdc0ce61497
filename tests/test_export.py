"""Hugging Face format weights: planned into files, written file by file, exported from a
checkpoint (the sharded case runs on 2 processes in ``tests/test_parallel.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mhpo_vl import checkpoint
from mhpo_vl.cli import main
from mhpo_vl.export import export_checkpoint
from mhpo_vl.models import load_policy


def test_plan_shards_fills_files_in_order_up_to_the_limit():
    sizes = [("a", 2), ("b", 2), ("c", 2), ("d", 5), ("e", 1)]
    # a+b fit in 5 bytes, c would not; d alone exceeds the limit and gets a file of its own
    assert checkpoint.plan_shards(sizes, 5) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert checkpoint.plan_shards(sizes, 100) == [["a", "b", "c", "d", "e"]]
    assert checkpoint.plan_shards([], 5) == []


def test_safetensors_writer_writes_each_file_as_it_completes(tmp_path):
    tensors = {"x.weight": torch.ones(2, 2), "y.weight": torch.zeros(3), "z": torch.arange(4.0)}
    plan = checkpoint.plan_shards([(k, v.numel() * 4) for k, v in tensors.items()], 20)
    assert plan == [["x.weight"], ["y.weight"], ["z"]]
    writer = checkpoint.SafetensorsWriter(
        tmp_path, plan, rename=lambda d: {k.replace("x.", "old_x."): v for k, v in d.items()}
    )
    writer.add("x.weight", tensors["x.weight"])
    assert (tmp_path / "model-00001-of-00003.safetensors").exists()  # written at once
    assert not (tmp_path / "model-00002-of-00003.safetensors").exists()
    writer.add("y.weight", tensors["y.weight"])
    writer.add("z", tensors["z"])
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "old_x.weight": "model-00001-of-00003.safetensors",
        "y.weight": "model-00002-of-00003.safetensors",
        "z": "model-00003-of-00003.safetensors",
    }
    assert index["metadata"]["total_size"] == (4 + 3 + 4) * 4
    assert torch.equal(load_file(str(tmp_path / "model-00003-of-00003.safetensors"))["z"],
                       tensors["z"])  # fmt: skip


def test_safetensors_writer_refuses_tensors_out_of_plan_order(tmp_path):
    writer = checkpoint.SafetensorsWriter(tmp_path, [["a", "b"]])
    writer.add("b", torch.ones(1))
    with pytest.raises(AssertionError, match="out of plan order"):
        writer.add("a", torch.ones(1))


def test_export_of_a_checkpoint_with_hf_weights_loads_with_stock_classes(tmp_path):
    from transformers import AutoModelForImageTextToText

    policy = load_policy("embedded:tiny-vl")
    ckpt = checkpoint.save_checkpoint(
        tmp_path / "run", 3, policy.model, policy.processor, {"step": 3}, keep_last=1
    )
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert not (out / checkpoint.STATE_FILE).exists()  # no trainer state
    assert (out / "config.json").exists() and (out / "processor_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(out)
    for (name, a), b in zip(policy.model.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "not a checkpoint folder"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}"), p)[-1], "holds neither"),
    ],
)
def test_export_of_a_wrong_folder_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    folder = make(tmp_path / "ckpt")
    assert main(["export", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
