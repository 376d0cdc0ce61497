"""The benchmark scripts in scripts/ that compare against other implementations:
``bench_logprob_memory.py`` (its two variants agree; its measurement tells them apart)
and ``bench_vs_trl.py`` (its command line, and its answer when TRL is missing). Cheap:
no TRL, no model, no training."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def logprob_bench():
    return _load("bench_logprob_memory")


@pytest.fixture(scope="module")
def trl_bench():
    return _load("bench_vs_trl")


def _env_with(pythonpath: Path | None) -> dict[str, str]:
    """This environment with PYTHONPATH set to ``pythonpath`` only (nothing else on it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _fake_trl(tmp_path: Path, body: str) -> Path:
    """A directory holding a ``trl`` package whose ``__init__`` is ``body``; first on the
    path, it shadows any installed TRL."""
    pkg = tmp_path / "fake" / "trl"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    return pkg.parent


# ---------------------------------------------------------------- bench_logprob_memory.py


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_variants_agree(logprob_bench, dtype):
    logprob_bench.check_agree(B=2, T=8, V=1000, dtype=dtype)  # raises if they differ
    logits, targets = logprob_bench.make_inputs(2, 5, 300, dtype)
    ours = logprob_bench.ours(logits, targets)
    grad = logits.grad.clone()
    logits.grad = None
    naive = logprob_bench.naive(logits, targets)
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(ours[0], naive[0], **tol)
    torch.testing.assert_close(ours[1], naive[1], **tol)
    torch.testing.assert_close(grad.float(), logits.grad.float(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_memory_measure_tells_ours_from_naive(logprob_bench, monkeypatch, dtype):
    # A scaled-down chunk, so that this small problem is split into several chunks as
    # B=4, T=256, V=151,936 is at the real chunk size (one chunk would show nothing).
    import mhpo_vl.models.logprobs as logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 1 << 20)
    B, T, V = 2, 48, 50_000
    ours = logprob_bench.measure_peak("ours", B, T, V, dtype)
    naive = logprob_bench.measure_peak("naive", B, T, V, dtype)
    logits_bytes = B * T * V * torch.tensor([], dtype=dtype).element_size()
    assert ours["input"] == naive["input"] == logits_bytes
    # naive keeps float32 [B, T, V] log-probs and probabilities, plus the logits' grad
    assert naive["peak"] >= 2 * B * T * V * 4 + logits_bytes
    assert ours["peak"] < 0.6 * naive["peak"], (ours, naive)


# ---------------------------------------------------------------- bench_vs_trl.py


def test_bench_vs_trl_help():
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_vs_trl.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_with(None),
    )
    assert out.returncode == 0, out.stderr
    assert "TRL" in out.stdout and "--model-size" in out.stdout and "--repeats" in out.stdout


def test_bench_vs_trl_without_trl_exits_2_with_install_hint(tmp_path):
    blocked = _fake_trl(tmp_path, "raise ImportError('trl is hidden for this test')\n")
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_vs_trl.py"), "--steps", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_with(blocked),
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install '.[bench]'" in out.stderr
    assert "trl==" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bench_vs_trl_3b_refuses_on_cpu(tmp_path):
    stub = _fake_trl(tmp_path, "__version__ = '1.16.0'\n")  # importable; never used
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_vs_trl.py"), "--model-size", "3b"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env_with(stub),
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "GPU" in out.stderr and "CUDA" in out.stderr


def test_bench_vs_trl_settings_and_child_command(trl_bench):
    tiny = trl_bench.parse_args([])
    assert (tiny.prompts, tiny.group, tiny.new_tokens, tiny.rows) == (8, 8, 64, 64)
    assert (tiny.dtype, tiny.grad_ckpt, tiny.micro_batch) == ("float32", False, None)
    big = trl_bench.parse_args(["--model-size", "3b"])
    assert (big.prompts, big.new_tokens, big.dtype, big.grad_ckpt) == (16, 256, "bfloat16", True)
    with pytest.raises(SystemExit):
        trl_bench.parse_args(["--micro-batch", "7"])  # must divide 8 x 8
    tiny.data_file = "/x/rows.parquet"
    argv = trl_bench.child_argv(tiny, "trl", "/model")
    child = trl_bench.parse_args(argv[2:])
    assert child.child == "trl" and child.resolved_dir == "/model"
    assert child.data_file == "/x/rows.parquet"
    for key in ("prompts", "group", "new_tokens", "lr", "dtype", "grad_ckpt", "steps", "warmup"):
        assert getattr(child, key) == getattr(tiny, key), key
    overrides = trl_bench.ours_overrides(child, "/model", "/out")
    assert "algorithm.loss={name: grpo}" in overrides and "trainer.minibatches=1" in overrides
    assert "algorithm.kl_coef=0.0" in overrides and "data.eval=null" in overrides


def test_bench_vs_trl_reward_is_our_verifier(trl_bench):
    columns = {
        "id": ["a", "b", "c"],
        "question": ["How many?", "Which colour?", "Which colour?"],
        "answer": ["3", "red", "red"],
        "choices": [None, ["red", "green"], ["red", "green"]],
        "answer_type": ["integer", "text", "text"],
        "image": [None, None, None],  # TRL passes every column; the verifier ignores it
    }
    completions = [[{"role": "assistant", "content": c}] for c in ("3", "A", "B")]
    assert trl_bench.accuracy_reward(completions, **columns) == [1.0, 1.0, 0.0]
