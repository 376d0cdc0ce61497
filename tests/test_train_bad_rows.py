"""Bad rows through the real trainer: images that only fail when decoded are skipped,
counted and named in metrics.jsonl, every step still has P prompts, and the run goes on
(and, because the data order resumes exactly, a rerun no longer crashes at that step)."""

from __future__ import annotations

import json

import pytest
from test_data_bad_rows import _corrupt_idat_png, _png, _truncated_jpeg
from test_train_e2e import _metrics, _train

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


@pytest.fixture
def dataset(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(16):
        name = list(COLORS)[i % 3]
        _png(img / f"ok{i}.png", COLORS[name], size=(56, 56))
        rows.append({"id": f"ok{i}", "image": f"img/ok{i}.png", "answer": name})
    _truncated_jpeg(img / "trunc.jpg")
    _corrupt_idat_png(img / "idat.png")
    rows.insert(1, {"id": "trunc", "image": "img/trunc.jpg", "answer": "red"})
    rows.insert(5, {"id": "idat", "image": "img/idat.png", "answer": "blue"})
    path = tmp_path / "train.jsonl"
    with open(path, "w") as fh:
        for row in rows:
            row = {**row, "question": "What color is the square?", "choices": list(COLORS)}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.mark.slow
def test_rows_failing_to_decode_are_skipped_and_counted(tmp_path, dataset):
    out = tmp_path / "run"
    res = _train(
        "recipes/tiny/mhpo.yaml", out, f"data.train.source={dataset}", "data.max_bad_frac=0.5",
        "trainer.max_steps=3", "trainer.prompts_per_step=6", "rollout.group_size=2",
        "trainer.minibatches=1", "eval.at_start=false", "eval.every=0", "eval.size=8",
    )  # fmt: skip
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    last = records[-1]
    assert last["data/bad_rows"] == 2
    assert last["data/bad_rows/unreadable_image"] == 2
    assert all(r["response_length/mean"] > 0 for r in records)
    assert "trunc" in res.stderr and "idat" in res.stderr and "trunc.jpg" in res.stderr
