"""The shared-prefix forward equals the naive one: log-probs and gradients, float64,
to 1e-10, on tiny models of all three Qwen VL architectures and a text one, with
images, left padding, early EOS, ragged groups (dynamic sampling keeps whole groups of
different sizes after select) and micro-batches."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.batch import SamplingParams
from mhpo_vl.embedded.tiny import build_embedded, parse_embedded, task_rows
from mhpo_vl.models import load_policy
from mhpo_vl.models.logprobs import completion_logits, logprobs_from_logits
from mhpo_vl.models.policy import enable_activation_checkpointing
from mhpo_vl.models.prefix import (
    PrefixLayout,
    grouped_attention,
    prompt_groups,
    shared_prefix_logits,
)
from mhpo_vl.rollout import HFEngine, build_prompts

SMALL = "sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0"
ARCHS = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def case(request, tmp_path_factory):
    arch = request.param
    name = "tiny-text" if arch == "qwen2" else "tiny-vl"
    out = tmp_path_factory.mktemp(arch)
    build_embedded(parse_embedded(f"{name}?{SMALL}&arch={arch}"), out)
    policy = load_policy(str(out))
    rows = task_rows("text" if arch == "qwen2" else "vision", "test", 3)  # mixed lengths
    torch.manual_seed(0)
    batch = HFEngine(policy).generate(
        build_prompts(rows), SamplingParams(n=3, max_new_tokens=7, temperature=1.5)
    )
    # random-init models rarely stop early: end three completions after 3 tokens, as an
    # EOS would (mask and attention off after it, padding ids); row 3 heads its group
    P = batch.prompt_len
    for r in (1, 3, 4):
        batch.response_mask[r, 3:] = 0
        batch.attention_mask[r, P + 3 :] = 0
        batch.input_ids[r, P + 3 :] = policy.tokenizer.pad_token_id
    policy.model.double()
    _norms_in_float64(policy.model)
    if "pixel_values" in batch.extra:
        batch.extra["pixel_values"] = batch.extra["pixel_values"].double()
    return policy, batch


def _norms_in_float64(model):
    """transformers' RMSNorm computes in float32 whatever the dtype; a float32 step
    would make the two forwards' gradients differ by float32 rounding (the shared prompt
    sums its G upstream gradients before the norm, the naive forward after). For a
    float64 comparison, norms compute in the input dtype."""

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = forward.__get__(module)


def _logp(model, batch, groups=None):
    logits = (
        completion_logits(model, batch)
        if groups is None
        else shared_prefix_logits(model, batch, groups)
    )
    T = batch.response_mask.shape[1]
    return logprobs_from_logits(logits, batch.input_ids[:, -T:], with_entropy=True)


def _grads(model, batch, groups=None):
    model.zero_grad(set_to_none=True)
    logp, ent = _logp(model, batch, groups)
    mask = batch.response_mask.double()
    weights = torch.linspace(-1, 1, logp.numel(), dtype=torch.float64).view_as(logp)
    ((logp * weights + 0.1 * ent) * mask).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_groups_are_found_from_the_prompts(case):
    _, batch = case
    assert prompt_groups(batch) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert batch.prompt_len > 0 and batch.attention_mask[:, : batch.prompt_len].min() == 0  # padded


def test_logprobs_and_entropies_equal_the_naive_forward(case):
    policy, batch = case
    mask = batch.response_mask.bool()
    with torch.no_grad():
        naive = _logp(policy.model, batch)
        shared = _logp(policy.model, batch, prompt_groups(batch))
    for a, b in zip(shared, naive, strict=True):
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-10)
    assert (batch.response_mask.sum(1) < batch.response_mask.shape[1]).any()  # early EOS


def test_gradients_equal_the_naive_forward(case):
    policy, batch = case
    naive = _grads(policy.model, batch)
    shared = _grads(policy.model, batch, prompt_groups(batch))
    assert naive.keys() == shared.keys()
    vision = [n for n in naive if "visual" in n]
    assert vision or not batch.extra  # VL models: the vision tower gets gradients too
    for name in naive:
        torch.testing.assert_close(shared[name], naive[name], rtol=0, atol=1e-10, msg=name)


def test_gradients_with_activation_checkpointing(case):
    """Checkpointed layers are recomputed in the backward: the recompute must take the
    grouped attention again (it depends on the forward's arguments, not on a setting
    that could have changed since). Checkpointing itself moves float64 gradients by
    about 1e-7 relative (transformers' input-gradient hook changes summation order), so
    the check is to 1e-5 relative; a recompute through the packed sequence's plain
    attention would be off by the order of the gradients themselves."""
    policy, batch = case
    model = policy.model
    enable_activation_checkpointing(model)  # either transformers name (5.20 for vLLM)
    _norms_in_float64(model)  # enabling checkpointing puts the float32 norms back
    model.train()
    try:
        naive = _grads(model, batch)
        shared = _grads(model, batch, prompt_groups(batch))
    finally:
        model.activation_checkpointing_disable()
        _norms_in_float64(model)
        model.eval()
    for name in naive:
        scale = float(naive[name].abs().max())
        torch.testing.assert_close(shared[name], naive[name], rtol=0, atol=1e-5 * scale, msg=name)


def test_ragged_groups_and_micro_batches(case):
    """Whole groups of different sizes (what dynamic sampling keeps), in another order,
    and a micro-batch holding part of the rows: still the naive values."""
    policy, batch = case
    sub = batch.select([5, 3, 0, 1, 2, 8])  # groups of 2, 3 and 1
    groups = prompt_groups(sub)
    assert sorted(map(len, groups)) == [1, 2, 3]
    with torch.no_grad():
        naive, _ = _logp(policy.model, sub)
        shared, _ = _logp(policy.model, sub, groups)
    mask = sub.response_mask.bool()
    torch.testing.assert_close(shared[mask], naive[mask], rtol=0, atol=1e-10)


def _attention_by_hand(q, k, v, allowed, scale):
    """softmax(q k^T * scale) v over the allowed keys, query by query."""
    out = torch.zeros_like(q)
    for i in range(q.shape[1]):
        keys = allowed[i].nonzero().flatten()
        if len(keys):
            w = torch.softmax((k[:, keys] @ q[:, i, :, None]).squeeze(-1) * scale, dim=-1)
            out[:, i] = (w[..., None] * v[:, keys]).sum(1)
    return out


def test_grouped_attention_by_hand():
    """Two packed rows: P = 3 with one and zero padding tokens, G = 2 completions of
    T = 2; 4 query heads over 2 key-value heads. Each real query attends exactly: the
    prompt causally; a completion the real prompt and its own earlier tokens."""
    torch.manual_seed(0)
    N, H, Hkv, D, P, G, T = 2, 4, 2, 5, 3, 2, 2
    L = P + G * T
    q = torch.randn(N, H, L, D, dtype=torch.float64)
    k, v = (torch.randn(N, Hkv, L, D, dtype=torch.float64) for _ in range(2))
    layout = PrefixLayout(starts=(1, 0), prompt_len=P, groups=G, completion_len=T)
    module = type("Attention", (), {"num_key_value_groups": H // Hkv})()
    out, _ = grouped_attention(module, q, k, v, None, scaling=0.3, prefix_layout=layout)
    assert out.shape == (N, L, H, D)
    segment = [0] * P + [1] * T + [2] * T  # 0: prompt, g: completion g
    for n, start in enumerate(layout.starts):
        allowed = torch.zeros(L, L, dtype=torch.bool)
        for i in range(start, L):
            for j in range(start, i + 1):
                allowed[i, j] = segment[j] == 0 or segment[j] == segment[i]
        kk, vv = k[n].repeat_interleave(H // Hkv, 0), v[n].repeat_interleave(H // Hkv, 0)
        expected = _attention_by_hand(q[n], kk, vv, allowed, 0.3).transpose(0, 1)
        torch.testing.assert_close(out[n], expected, rtol=0, atol=1e-12)
    assert torch.equal(out[0, 0], torch.zeros(H, D))  # the padding position


def test_no_attention_over_the_packed_length_squared(case):
    """No tensor of the forward is L x L (L = the packed length, 92 to 104 tokens
    here): no tensor created has two dimensions of length L, as the old dense mask
    [N, 1, L, L] had."""
    from torch.utils._python_dispatch import TorchDispatchMode

    policy, batch = case
    groups = prompt_groups(batch)
    L = batch.prompt_len + max(map(len, groups)) * batch.response_mask.shape[1]
    shapes = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    with torch.no_grad(), Shapes():
        shared_prefix_logits(policy.model, batch, groups)
    assert shapes and all(s.count(L) <= 1 for s in shapes), [s for s in shapes if s.count(L) > 1]


def test_micro_chunks_keep_whole_groups():
    from mhpo_vl.training.update import micro_chunks

    rows = [4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11]  # three groups of 4, shuffled as groups
    assert micro_chunks(rows, 8, group=4) == [[4, 5, 6, 7, 0, 1, 2, 3], [8, 9, 10, 11]]
    assert micro_chunks(rows, 6, group=4) == [[4, 5, 6, 7], [0, 1, 2, 3], [8, 9, 10, 11]]
    # a group larger than a micro-batch is split; nothing is lost or repeated
    assert micro_chunks(rows, 3, group=4) == [
        [4, 5, 6], [7], [0, 1, 2], [3], [8, 9, 10], [11]
    ]  # fmt: skip
    assert micro_chunks(rows, 5, group=1) == [rows[:5], rows[5:10], rows[10:]]
    assert micro_chunks(rows, None, group=4) == [rows]


@pytest.mark.slow
def test_training_step_with_and_without_the_shared_prefix(tmp_path):
    """Through the CLI: the first update's loss, gradient norm and entropy agree (float32;
    micro-batches of whole groups either way, so the per-micro-batch means match)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    got = {}
    for shared in ("true", "false"):
        out = tmp_path / shared
        cmd = [
            sys.executable, "-m", "mhpo_vl", "train", "recipes/tiny/mhpo.yaml",
            f"trainer.output_dir={out}", "trainer.max_steps=1", "trainer.minibatches=1",
            "trainer.prompts_per_step=4", "trainer.micro_batch_size=16",
            f"trainer.shared_prefix={shared}", "eval.at_start=false", "eval.size=4",
            "trainer.progress_bar=false", "trainer.report_to=[]",
        ]  # fmt: skip
        res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        got[shared] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    on, off = got["true"], got["false"]
    assert on["reward/mean"] == off["reward/mean"]  # the same rollouts
    for key in ("loss", "grad_norm", "entropy"):
        assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key
