"""Micro-batches: by rows and by tokens, whole prompt groups where they fit, and
without the columns that are padding in all their rows."""

from __future__ import annotations

import torch

from mhpo_vl.batch import RolloutBatch
from mhpo_vl.training.update import micro_chunks


def test_micro_chunks_by_token_budget_keep_whole_groups():
    rows = list(range(8))  # groups of 4: rows 0-3 and 4-7
    tokens = [3, 3, 3, 3, 1, 1, 1, 1]

    def cost(chunk):  # a prompt of 2 tokens per group, counted once, plus each answer
        return 2 * len({i // 4 for i in chunk}) + sum(tokens[i] for i in chunk)

    # both groups: 14 + 6 = 20 tokens; a budget of 14 takes them one group a chunk
    assert micro_chunks(rows, None, 4, cost, 14) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert micro_chunks(rows, None, 4, cost, 20) == [rows]
    # a group over the budget is split into the longest parts that fit (2 + 3 + 3 = 8)
    assert micro_chunks(rows, None, 4, cost, 8) == [[0, 1], [2, 3], [4, 5, 6, 7]]
    # a row over the budget alone is a chunk of its own; rows and tokens both bound
    assert micro_chunks(rows, None, 4, cost, 4) == [[0], [1], [2], [3], [4, 5], [6, 7]]
    assert micro_chunks(rows, 3, 4, cost, 100) == [[0, 1, 2], [3], [4, 5, 6], [7]]


def test_trimmed_drops_the_columns_every_row_pads():
    """Prompt width 3 (column 0 padding in both rows), completions of width 4 of
    which at most 2 are real: 2 + 2 columns go, every real token stays where it was."""
    ids = torch.tensor([[0, 5, 6, 7, 8, 0, 0], [0, 0, 9, 10, 0, 0, 0]])
    attention = (ids != 0).long()
    response = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 0, 0, 0]])
    batch = RolloutBatch(
        input_ids=ids, attention_mask=attention, response_mask=response,
        extra={"mm_token_type_ids": torch.arange(14).view(2, 7)},
        sample_logprobs=torch.full((2, 4), -1.0),
    )  # fmt: skip
    t = batch.trimmed()
    assert t.input_ids.tolist() == [[5, 6, 7, 8], [0, 9, 10, 0]]
    assert t.prompt_len == 2 and t.response_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert t.extra["mm_token_type_ids"].tolist() == [[1, 2, 3, 4], [8, 9, 10, 11]]
    assert t.sample_logprobs.shape == (2, 2)
    assert batch.prompt_lengths.tolist() == [2, 1]  # real prompt tokens
    assert (batch.prompt_lengths + batch.response_lengths).tolist() == [4, 2]  # + answers
    assert t.trimmed() is t  # nothing left to drop


def test_a_trimmed_micro_batch_gives_the_same_logprobs():
    from mhpo_vl.batch import SamplingParams
    from mhpo_vl.embedded.tiny import task_rows
    from mhpo_vl.models import load_policy, token_logprobs
    from mhpo_vl.rollout import HFEngine, build_prompts

    policy = load_policy("embedded:tiny-text")
    torch.manual_seed(0)
    batch = HFEngine(policy).generate(
        build_prompts(task_rows("text", "test", 4)), SamplingParams(n=2, max_new_tokens=6)
    )
    pad = torch.nn.functional.pad
    batch = RolloutBatch(  # as if another micro-batch's completion were 3 tokens longer
        input_ids=pad(batch.input_ids, (0, 3), value=policy.tokenizer.pad_token_id),
        attention_mask=pad(batch.attention_mask, (0, 3)),
        response_mask=pad(batch.response_mask, (0, 3)),
    )
    sub = batch.select([0, 1, 2]).trimmed()
    T = sub.response_mask.shape[1]
    assert T <= batch.response_mask.shape[1] - 3
    with torch.no_grad():
        full, _ = token_logprobs(policy.model, batch.select([0, 1, 2]))
        trimmed, _ = token_logprobs(policy.model, sub)
    mask = sub.response_mask.bool()
    torch.testing.assert_close(trimmed[mask], full[:, :T][mask], rtol=1e-5, atol=1e-6)


def test_a_token_budget_splits_the_update_not_its_result(tmp_path):
    """Through the CLI: one step with micro-batches of at most 40 tokens computes the
    same loss and gradient as one micro-batch (the loss is normalised over the whole
    minibatch, whatever its split)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    base = [
        sys.executable, "-m", "mhpo_vl", "train", "recipes/tiny/mhpo_text.yaml",
        "trainer.max_steps=1", "trainer.minibatches=1", "eval.at_start=false",
        "eval.size=4", "trainer.progress_bar=false", "trainer.report_to=[]",
        "trainer.prompts_per_step=4", "rollout.group_size=4",
    ]  # fmt: skip
    records = {}
    for name, extra in (("whole", []), ("budget", ["trainer.micro_batch_tokens=40"])):
        out = tmp_path / name
        res = subprocess.run(
            [*base, f"trainer.output_dir={out}", *extra], cwd=root, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        records[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    a, b = records["whole"], records["budget"]
    for key in ("loss", "grad_norm", "reward/mean"):  # (entropy: a mean of micro-batch means)
        assert b[key] == __import__("pytest").approx(a[key], rel=1e-5, abs=1e-6), key
