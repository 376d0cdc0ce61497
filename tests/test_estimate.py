"""``mhpo-vl estimate``: the memory model (hand-computed values on a small made-up model),
the real models' parameter counts against their published sizes, the CLI (JSON, exit
codes), agreement with a measured update on the CPU, and every committed recipe against
the hardware its header names."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from mhpo_vl import estimate as E
from mhpo_vl.cli import main
from mhpo_vl.config import ModelConfig, ParallelConfig, Recipe, RolloutConfig, TrainerConfig
from mhpo_vl.errors import UserError
from mhpo_vl.estimate import model as estimate_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
GB = 1 << 30
M = 1_000_000

# ------------------------------------------------------------------------------ a made-up model

# 1e9 parameters: 8 decoder blocks of 100M (the FSDP units), 200M outside them (a tied
# 100M embedding, norms...), 900M in Linear layers; widths chosen for easy arithmetic.
HAND = E.ModelShape(
    name="hand", source="test", model_type="qwen2", params=1000 * M, vision_params=0,
    embedding_params=100 * M, linear_params=900 * M, largest_param=100 * M,
    block_params=(100 * M,) * 8, tied=True, layers=8, hidden=1024, intermediate=4096,
    heads=8, kv_heads=2, head_dim=128, vocab=32000, max_positions=32768, qk_norm=False,
)  # fmt: skip


def recipe(
    strategy: str = "ddp",
    engine: str = "hf",
    checkpointing: bool = False,
    shared: bool = False,
    engine_args: dict | None = None,
    **parallel,
) -> Recipe:
    """8 prompts x G=4 a step, 2 minibatches, micro-batches of 4, 128 new tokens, bf16
    compute over float32 master weights."""
    return Recipe(
        model=ModelConfig(
            path="hand", dtype="bfloat16", master_dtype="float32",
            gradient_checkpointing=checkpointing,
        ),
        rollout=RolloutConfig(
            engine=engine, group_size=4, max_new_tokens=128, engine_args=engine_args or {}
        ),
        trainer=TrainerConfig(
            prompts_per_step=8, minibatches=2, micro_batch_size=4, shared_prefix=shared
        ),
        parallel=ParallelConfig(strategy=strategy, **parallel),
    )  # fmt: skip


def test_state_ddp_two_gpus():
    st = E.state(recipe("ddp"), HAND, gpus=2)
    assert st.params == 4 * 1000 * M  # float32 master weights, whole on each GPU
    assert st.grads == 4 * 1000 * M
    assert st.optimizer == 8 * 1000 * M  # two float32 AdamW states
    assert st.ddp_buckets == 4 * 1000 * M  # the reducer's second copy (2+ GPUs)
    assert st.optimizer_step == 4 * 1000 * M  # foreach AdamW's sqrt(v) temporary
    assert st.reference == 0 and st.cpu == 0
    assert E.state(recipe("ddp"), HAND, gpus=1).ddp_buckets == 0  # no reducer alone


def test_state_fsdp_shards_and_grad_sync():
    st = E.state(recipe("fsdp"), HAND, gpus=4)
    assert (st.params, st.grads, st.optimizer) == (1000 * M, 1000 * M, 2000 * M)
    assert st.ddp_buckets == 0 and st.optimizer_step == 1000 * M
    # minibatch sync: full unsharded float32 gradients on every GPU, not divided
    st = E.state(recipe("fsdp", grad_sync="minibatch"), HAND, gpus=4)
    assert st.grads == 4 * 1000 * M and st.params == 1000 * M
    assert E.grad_sync(recipe("fsdp")) == "micro_batch"
    assert E.grad_sync(recipe("ddp")) == "minibatch"


def test_state_cpu_offload():
    st = E.state(recipe("fsdp", cpu_offload=True), HAND, gpus=4)
    assert (st.params, st.grads, st.optimizer, st.optimizer_step) == (0, 0, 0, 0)
    assert st.cpu == 1000 * M + 1000 * M + 2000 * M  # per GPU process
    est = E.estimate(recipe("fsdp", cpu_offload=True), HAND, gpus=4, prompt_tokens=128)
    assert est.cpu_ram_per_node == 4 * 4000 * M
    assert est.phases["update"]["parameters"] == 0


def test_state_reference_model():
    r = recipe("fsdp")
    r.algorithm.kl_coef = 0.05
    assert E.state(r, HAND, gpus=4).reference == 2 * 1000 * M // 4  # bf16, sharded
    r = recipe("ddp")
    r.algorithm.kl_coef = 0.05
    assert E.state(r, HAND, gpus=2).reference == 2 * 1000 * M
    est = E.estimate(r, HAND, gpus=2, prompt_tokens=128)
    assert all(est.phases[p]["reference"] == 2000 * M for p in ("load", "rollout", "update"))
    assert E.state(recipe("ddp"), HAND, gpus=2).reference == 0  # kl_coef 0: not loaded


def test_workload_micro_batches_and_shared_prefix():
    w = E.workload(recipe(), HAND, gpus=2, prompt_tokens=128)
    # 8 x 4 / 2 = 16 rollouts per GPU, 8 per minibatch, micro-batches of 4 rows
    assert (w.rollouts, w.minibatch_rows, w.micro_rows) == (16, 8, 4)
    assert (w.sequences, w.seq_len, w.tokens) == (4, 256, 1024)
    # shared prefix, micro-batch 4 = G: one group packed, the prompt once
    w = E.workload(recipe(shared=True), HAND, gpus=2, prompt_tokens=128)
    assert (w.sequences, w.seq_len) == (1, 128 + 4 * 128)
    # max_model_len bounds the prompt: 1024 - 128
    w = E.workload(recipe(engine="vllm", engine_args={"max_model_len": 1024}), HAND, gpus=2)
    assert w.prompt_tokens == 896


def test_block_activation_formula_by_hand():
    """DDP mixed precision: float32 residual stream (r = 4), bfloat16 compute (c = 2)."""
    h, inter, a, k, d = 1024, 4096, 8, 2, 128
    per_token = (
        4 * h  # block input
        + 4 * h  # RMSNorm: the float32 normalized output (the input is float32 already)
        + 3 * 2 * h  # three autocast casts of the normalized input for q, k, v
        + 3 * 2 * a * d  # q and k, v repeated to 8 heads (masked attention)
        + (2 * 2 * a * d + 4 * a)  # attention output, its contiguous copy, logsumexp
        + (4 * h + 4 * h)  # residual after attention, second RMSNorm
        + 2 * 2 * h  # two casts for gate and up
        + 4 * 2 * inter  # gate, SiLU, up, product
    )
    assert per_token == 69664
    assert E.block_activation_bytes(1000, h, inter, a, k, d, 2, 4) == 1000 * per_token
    # FSDP: everything bf16 (r = c = 2): one shared input per projection group, and
    # the RMSNorm's float32 copy appears
    fsdp = (
        2 * h  # block input
        + (4 + 2) * h  # RMSNorm: float32 copy of the bf16 input, bf16 normalized output
        + 2 * h  # one normalized tensor shared by q, k, v
        + (3 * 2 * a * d + 2 * 2 * a * d + 4 * a)  # attention as above (a * d == h)
        + (2 * h + (4 + 2) * h)  # residual, second RMSNorm
        + 2 * h  # shared gate/up input
        + 4 * 2 * inter
    )
    assert fsdp == 30 * h + 4 * a + 8 * inter
    assert E.block_activation_bytes(1, h, inter, a, k, d, 2, 2) == fsdp
    # no mask: GQA in SDPA, k and v keep their 2 heads
    assert (
        E.block_activation_bytes(1, h, inter, a, k, d, 2, 2)
        - E.block_activation_bytes(1, h, inter, a, k, d, 2, 2, masked=False)
        == 2 * (3 * a - (a + 2 * k)) * d
    )


def test_activations_with_and_without_checkpointing():
    r = recipe("ddp", checkpointing=True)
    w = E.workload(r, HAND, gpus=2, prompt_tokens=128)
    acts = E.activations(r, HAND, w)
    tokens = 1024  # 4 sequences of 256
    block = 69664 * tokens + 2 * 4 * 256 * 256  # + the additive mask SDPA keeps
    outside = (2 * 4) * 1024 * tokens  # final RMSNorm: its input and normalized output
    assert acts.mask == 4 * 256 * 256  # the boolean [4, 1, 256, 256] mask
    assert acts.kept_checkpointed == 8 * 4 * 1024 * tokens + outside
    assert acts.kept_full == 8 * block + outside
    assert acts.recompute == block
    assert acts.backward_work == tokens * (2 * 4 * 1024 + 3 * 2 * 4096)
    assert acts.backward_peak(True) == acts.kept_checkpointed + acts.mask + block + (
        acts.backward_work
    )
    assert acts.backward_peak(False) == acts.kept_full + acts.mask + acts.backward_work
    assert acts.backward_peak(False) > 4 * acts.backward_peak(True)


def test_shared_prefix_mask_is_counted():
    r = recipe("fsdp", shared=True)
    w = E.workload(r, HAND, gpus=2, prompt_tokens=128)
    L = 128 + 4 * 128
    assert E.mask_bytes(w.sequences, w.seq_len, 2) == (L * L, 2 * L * L)
    assert E.activations(r, HAND, w).mask == L * L


def test_logits_working_memory():
    w = E.workload(recipe(), HAND, gpus=2, prompt_tokens=128)
    # [4, 128, 32000] bf16 logits and their gradient, plus one 16 MiB float32 chunk
    assert E.logits_bytes(recipe(), HAND, w) == 2 * 2 * 4 * 128 * 32000 + 16 * (1 << 20)


def test_gathered_weights():
    assert E.gathered_bytes(recipe("ddp"), HAND) == 2 * 900 * M  # autocast's casts
    # FSDP: the root unit (200M) plus the current and the prefetched block
    assert E.gathered_bytes(recipe("fsdp"), HAND) == 2 * (200 * M + 2 * 100 * M)
    assert E.gathered_bytes(recipe("fsdp", reshard_after_forward=False), HAND) == 2000 * M


def test_vllm_share_and_kv_cache():
    r = recipe("fsdp", engine="vllm", engine_args={"max_model_len": 4096})
    v = E.vllm_plan(r, HAND, 80)
    assert v.share == int(0.5 * 80 * GB)  # the engine's default gpu_memory_utilization
    assert v.weights == 2 * 1000 * M
    assert v.working == 16384 * (4 * 1024 + 2 * 4096) * 2 + 1024 * 32000 * 4
    assert v.cuda_graphs == GB // 2
    assert v.kv_cache == v.share - v.weights - v.working - v.cuda_graphs
    assert E.kv_bytes_per_token(HAND, 2) == 2 * 8 * 2 * 128 * 2
    assert v.seq_bytes == 8192 * 4096
    assert v.concurrent == v.kv_cache // v.seq_bytes
    assert v.asleep == v.cuda_graphs  # what sleep leaves on the GPU
    eager = {"max_model_len": 4096, "enforce_eager": True}
    assert E.vllm_plan(recipe("fsdp", engine="vllm", engine_args=eager), HAND, 80).asleep == 0


def test_vllm_auto_length_and_explicit_kv_cache():
    auto = E.vllm_plan(recipe("fsdp", engine="vllm", engine_args={"max_model_len": -1}), HAND, 80)
    # vLLM fits the length to its KV cache, up to the model's own context
    assert auto.max_model_len == min(32768, auto.kv_cache // 8192) and auto.concurrent >= 1
    args = {"max_model_len": 4096, "extra": {"kv_cache_memory_bytes": 4 * GB}}
    v = E.vllm_plan(recipe("fsdp", engine="vllm", engine_args=args), HAND, 80)
    assert v.kv_cache == 4 * GB and v.share == v.weights + v.working + v.cuda_graphs + 4 * GB
    assert v.concurrent == 4 * GB // (8192 * 4096)


def test_vllm_problems_fail_the_estimate():
    small = recipe(
        "fsdp", engine="vllm", engine_args={"gpu_memory_utilization": 0.03, "max_model_len": 512}
    )
    est = E.estimate(small, HAND, gpus=4, prompt_tokens=128)
    assert not est.fits and "does not hold its weights" in est.problems[0]
    long = recipe(
        "fsdp", engine="vllm", engine_args={"gpu_memory_utilization": 0.05, "max_model_len": 300000}
    )
    est = E.estimate(long, HAND, gpus=4)
    assert not est.fits and "holds no sequence" in est.problems[0]


def test_phases_and_peak_by_hand():
    r = recipe("fsdp", engine="vllm", engine_args={"max_model_len": 4096}, checkpointing=True)
    est = E.estimate(r, HAND, gpus=4, gpu_mem_gb=80)
    runtime, share = GB, int(40 * GB)
    assert est.phases["load"] == {
        "runtime": runtime, "parameters": 1000 * M, "reference": 0, "load_buffer": 400 * M,
    }  # fmt: skip
    # vLLM is built beside the loaded model; AdamW's state does not exist yet
    assert sum(est.phases["engine"].values()) == runtime + 1000 * M + share
    batch = E.batch_bytes(HAND, est.work)
    assert sum(est.phases["rollout"].values()) == runtime + 1000 * M + 2000 * M + batch + share
    update = est.phases["update"]
    assert update["vllm"] == GB // 2  # asleep: its CUDA graph pool only
    assert update["gradients"] == 1000 * M and update["optimizer"] == 2000 * M
    assert est.peak_phase == "rollout" and est.peak == sum(est.phases["rollout"].values())
    assert est.fits
    # one 10 GB GPU: 4 GB of float32 weights and 8 GB of AdamW state already exceed it
    assert not E.estimate(r, HAND, gpus=1, gpu_mem_gb=10).fits


def test_update_worst_moment_by_hand():
    r = recipe("ddp", checkpointing=False)
    est = E.estimate(r, HAND, gpus=2, prompt_tokens=1024)
    w, acts = est.work, est.activations
    resident = (
        GB  # CUDA runtime
        + 4000 * M + 4000 * M + 8000 * M + 4000 * M  # params, buckets, AdamW, grads
        + E.batch_bytes(HAND, w)
    )  # fmt: skip
    backward_start = (
        resident
        + 2 * 900 * M  # autocast's bf16 copies of the Linear weights
        + acts.kept_full + acts.mask
        + E.logits_bytes(r, HAND, w)
        + 4 * 100 * M  # the head's float32 weight gradient before it is accumulated
    )  # fmt: skip
    optimizer_step = resident + 4000 * M  # foreach AdamW's temporary
    assert backward_start > optimizer_step
    assert est.update_step == "backward start"
    assert sum(est.phases["update"].values()) == backward_start
    # short prompts: the optimizer step is the worst moment
    est = E.estimate(r, HAND, gpus=2, prompt_tokens=128)
    assert est.update_step == "optimizer step"
    assert sum(est.phases["update"].values()) == resident - E.batch_bytes(HAND, w) + (
        E.batch_bytes(HAND, est.work) + 4000 * M
    )


def test_hf_engine_rollout_by_hand():
    r = recipe("fsdp")
    est = E.estimate(r, HAND, gpus=4, prompt_tokens=128)
    gen = E.hf_generation(r, HAND, est.work)
    assert gen["weights"] == 2 * 1000 * M  # the whole model gathered in bf16
    seqs = max(est.work.rollouts, r.eval.batch_size)  # batch_size None: all at once
    assert gen["kv_cache"] == 8192 * seqs * (128 + 128)
    assert est.phases["rollout"]["kv_cache"] == gen["kv_cache"]
    assert "vllm" not in est.phases["rollout"] and est.phases["engine"] == {}


def test_argument_checks():
    with pytest.raises(UserError, match="--gpus"):
        E.estimate(recipe(), HAND, gpus=0)
    with pytest.raises(UserError, match="--gpu-mem"):
        E.estimate(recipe(), HAND, gpu_mem_gb=0)
    with pytest.raises(UserError, match="--prompt-tokens"):
        E.estimate(recipe(), HAND, prompt_tokens=0)


# ------------------------------------------------------------------------------ real models

# hub id -> (published parameters, our count must be within 1%)
PUBLISHED = {
    "Qwen/Qwen2.5-VL-7B-Instruct": 8.29e9,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3.75e9,
    "Qwen/Qwen2-VL-2B-Instruct": 2.21e9,
    "Qwen/Qwen3-VL-4B-Instruct": 4.44e9,
    "Qwen/Qwen3-VL-8B-Instruct": 8.77e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
    "Qwen/Qwen3-4B-Base": 4.02e9,
}


@cache
def shape_of(path: str) -> E.ModelShape:
    return E.load_model_shape(path)


@pytest.fixture(autouse=True)
def _no_hub_cache(monkeypatch):
    """The tests read the shipped configs, whatever this machine's HF cache holds."""
    monkeypatch.setattr(estimate_model, "_hub_cache_config", lambda repo_id: None)


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_parameter_counts_match_published_sizes(hub_id):
    shape = shape_of(hub_id)
    assert shape.params == pytest.approx(PUBLISHED[hub_id], rel=0.01)
    assert "model_configs" in shape.source
    parts = shape.vision_params + shape.language_params + shape.embedding_params
    assert parts == shape.params and shape.language_params > 0


def test_exact_counts_against_safetensors_indexes():
    """Where the vendored checkpoint's index was available: its bf16 bytes / 2."""
    assert shape_of("Qwen/Qwen2.5-VL-3B-Instruct").params == 7_509_245_952 // 2
    assert shape_of("Qwen/Qwen2-VL-2B-Instruct").params == 4_417_971_200 // 2


def test_model_details():
    vl7 = shape_of("Qwen/Qwen2.5-VL-7B-Instruct")
    assert not vl7.tied and vl7.embedding_params == 2 * 152064 * 3584
    assert vl7.vision_hidden == 1280 and vl7.vision_layers == 32 and vl7.patch_size == 14
    assert len(vl7.block_params) == 28 + 32
    q2 = shape_of("Qwen/Qwen2-VL-2B-Instruct")  # its vision width is embed_dim
    assert (q2.vision_hidden, q2.vision_intermediate) == (1280, 5120) and q2.tied
    q3 = shape_of("Qwen/Qwen3-VL-8B-Instruct")
    assert q3.qk_norm and q3.head_dim == 128 and q3.patch_size == 16
    # freezing the vision tower leaves the language model trainable
    assert vl7.trainable(freeze_vision=True) == vl7.params - vl7.vision_params


def test_embedded_models_need_no_build():
    assert shape_of("embedded:tiny-vl").params == 1_452_416  # build_info of the default
    assert shape_of("embedded:tiny-text").params == 642_944
    assert shape_of("embedded:tiny-vl").embedded_image_pixels == 84 * 84


def test_config_lookup(tmp_path, monkeypatch):
    shipped = ROOT / "mhpo_vl/model_configs/Qwen/Qwen3-4B-Base/config.json"
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text(shipped.read_text())
    _, source, _ = E.model_config(str(local))
    assert source == "local directory"
    monkeypatch.setattr(
        estimate_model, "_hub_cache_config", lambda repo_id: str(local / "config.json")
    )
    _, source, _ = E.model_config("Qwen/Qwen3-4B-Base")
    assert source == "Hugging Face cache"  # the cache comes before the shipped copy
    monkeypatch.setattr(estimate_model, "_hub_cache_config", lambda repo_id: None)
    with pytest.raises(UserError, match="no config.json for this hub id.*model.path"):
        E.model_config("Qwen/Qwen-Nonexistent-1B")
    with pytest.raises(UserError, match="does not exist"):
        E.model_config(str(tmp_path / "missing"))


def test_shipped_configs_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"model_configs/**/*"' in text
    folder = ROOT / "mhpo_vl" / "model_configs"
    shipped = {p.parent.relative_to(folder).as_posix() for p in folder.rglob("config.json")}
    assert shipped == set(PUBLISHED)
    readme = (folder / "README.md").read_text()
    assert all(hub_id.split("/")[1] in readme for hub_id in PUBLISHED)


# ------------------------------------------------------------------------------ the CLI


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["estimate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_and_exit_codes(capsys):
    path = str(ROOT / "recipes/qwen2_5_vl_7b/geometry3k_mhpo.yaml")
    code, out, _ = _run(capsys, path, "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"] is True
    assert data["gpus"] == 8 and data["gpu_mem_gb"] == 80  # from the Hardware line
    assert data["peak_gb"] == max(p["total"] for p in data["phases"].values())
    for part in ("parameters", "gradients", "optimizer", "activations", "logits", "vllm"):
        assert part in data["parts_gb"]
    assert data["vllm"]["concurrent_sequences"] >= 1
    assert data["activations_gb"]["applies"] == "on"
    assert data["model"]["parameters"] == 8_292_166_656
    # on one 80 GB GPU the replicated... the sharded state does not fit: exit 1
    code, out, _ = _run(capsys, path, "--gpus", "1")
    assert code == 1 and "does NOT fit" in out
    # overrides apply, as for train and validate
    code, out, _ = _run(capsys, path, "trainer.micro_batch_size=1", "--json")
    assert code == 0 and json.loads(out)["workload"]["micro_rows"] == 1


def test_cli_user_mistakes_exit_2(capsys, tmp_path):
    path = str(ROOT / "recipes/qwen2_5_vl_7b/geometry3k_mhpo.yaml")
    for args, what in (
        ([path, "trainer.micro_batch_size=0"], "trainer.micro_batch_size"),
        ([path, "model.path=Qwen/Unpublished-1B"], "model.path"),
        ([str(tmp_path / "none.yaml")], "recipe file not found"),
        ([path, "--gpus", "0"], "--gpus"),
    ):
        code, out, err = _run(capsys, *args)
        assert code == 2 and out == ""
        assert err.startswith("mhpo-vl: error:") and what in err and err.count("\n") == 1


def test_cli_text_report_in_a_subprocess():
    path = ROOT / "recipes/qwen2_vl_2b/geometry3k_mhpo.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "estimate", str(path), "--gpu-mem", "80"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for needle in ("per GPU (GB)", "DDP gradient buckets", "AdamW state", "peak", "fits in 80"):
        assert needle in run.stdout


# ------------------------------------------------------------------------------ measurement


@pytest.fixture(scope="module")
def measure_memory():
    spec = importlib.util.spec_from_file_location(
        "measure_memory", ROOT / "scripts" / "measure_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["measure_memory"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("setting", ["shared prefix", "bfloat16 autocast, one row per completion"])
def test_estimate_agrees_with_a_measured_update(measure_memory, setting):
    """One update of a ~27M-parameter Qwen2 on the CPU (2 micro-batches, AdamW): the
    estimate's update phase is within 15% of the peak bytes of live tensors."""
    import torch

    if "bfloat16" in setting and not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        # measured 300 s on a 2-core AVX2 EPYC (bfloat16 matmuls emulated); the whole suite
        # took 4.5 min on the AVX-512 Xeon of earlier sessions
        pytest.skip("bfloat16 compute is emulated on this CPU (no AVX-512): too slow")
    torch.set_num_threads(2)
    s = measure_memory.SETTINGS[setting]
    model = measure_memory.build_model(s)
    assert 20e6 < sum(p.numel() for p in model.parameters()) < 60e6
    estimated, measured = measure_memory.estimated(s), measure_memory.measure(s)
    assert estimated == pytest.approx(measured, rel=0.15)
    # activations are a real share of it, so the formula is what is being tested
    shape = E.describe_model(measure_memory.model_config(s), "measured")
    est = E.estimate(measure_memory.recipe_for(s), shape, 1, prompt_tokens=s.prompt_tokens)
    assert est.phases["update"]["activations"] > 0.25 * measured


# ------------------------------------------------------------------------------ recipes


def test_real_recipes_name_their_hardware():
    for path in RECIPES:
        if path.parent.name != "tiny":
            assert E.hardware_from_header(path), f"{path}: no '# Hardware: Nx GPU NNGB' line"
    assert E.hardware_from_header(ROOT / "recipes/qwen2_vl_2b/geometry3k_mhpo.yaml") == (4, 80.0)
    assert E.hardware_from_header(ROOT / "recipes/tiny/mhpo.yaml") is None


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(ROOT).as_posix() for p in RECIPES])
def test_committed_recipe_fits_its_hardware(path):
    gpus, mem = E.hardware_from_header(path) or (1, E.DEFAULT_GPU_MEM_GB)
    r = E.load_recipe_for_estimate(path)
    est = E.estimate(r, shape_of(r.model.path), gpus, mem)
    assert not est.problems, est.problems
    assert est.fits, E.render_text(est, str(path))
