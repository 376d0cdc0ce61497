"""The real recipes (every YAML under recipes/ except recipes/tiny/, which has its own
tests): each one validates offline, names a real Qwen hub id, documents how to run it,
and uses the settings these runs are meant to have.

Data paths. A recipe reads the files a data/prepare_*.py script writes, e.g.
``data/geometry3k/train.parquet``. Validation (:func:`mhpo_vl.data.check_dataset_spec`)
accepts a registered name, an existing path, or something shaped like a hub id
(``owner/name``, two parts); ``data/geometry3k/train.parquet`` is none of these until
the script has run, so it fails validation in a fresh checkout. These tests therefore
run each prep script on its hub-schema fixtures (data/fixtures) into a temporary folder
and override ``data.train.source`` / ``data.eval.source`` with those files, after
checking that the recipe's own paths are exactly where that script writes.

Model paths are checked as hub ids without any network access: the expected
``Qwen/...`` id for each recipe folder. Nothing is downloaded.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DATA = ROOT / "data"
FIX = DATA / "fixtures"

# the tiny recipes and the paper-table rows (tests/test_paper_tables.py) have their own tests
REAL = sorted(
    p for p in RECIPES.rglob("*.yaml") if p.relative_to(RECIPES).parts[0] not in ("tiny", "paper")
)
IDS = [p.relative_to(RECIPES).as_posix() for p in REAL]

# recipe folder -> (hub id, parameters in billions, vision-language?)
MODELS = {
    "qwen2_vl_2b": ("Qwen/Qwen2-VL-2B-Instruct", 2.2, True),
    "qwen2_5_vl_3b": ("Qwen/Qwen2.5-VL-3B-Instruct", 3.8, True),
    "qwen2_5_vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", 8.3, True),
    "qwen3_vl_4b": ("Qwen/Qwen3-VL-4B-Instruct", 4.4, True),
    "qwen3_vl_8b": ("Qwen/Qwen3-VL-8B-Instruct", 8.8, True),
    "qwen2_5_7b_instruct": ("Qwen/Qwen2.5-7B-Instruct", 7.6, False),
    "qwen3_4b_base": ("Qwen/Qwen3-4B-Base", 4.0, False),
}
EXPECTED = {
    "qwen2_5_vl_3b/geometry3k_mhpo.yaml",
    "qwen2_5_vl_7b/geometry3k_mhpo.yaml",
    "qwen2_5_vl_7b/geometry3k_grpo.yaml",
    "qwen2_5_vl_7b/mathvista_mix_mhpo.yaml",
    "qwen2_vl_2b/geometry3k_mhpo.yaml",
    "qwen3_vl_4b/geometry3k_mhpo.yaml",
    "qwen3_vl_8b/mathvista_mix_mhpo.yaml",
    "qwen2_5_7b_instruct/math_mhpo.yaml",
    "qwen3_4b_base/math_mhpo.yaml",
}
# prepared-data folder -> the script that writes it, and whether its rows have images
PREPARED = {
    "data/geometry3k": ("data/prepare_geometry3k.py", True),
    "data/mathvista_mix": ("data/prepare_mathvista_mix.py", True),
    "data/math": ("data/prepare_math.py", False),
}
VLLM_ARGS = {
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "max_model_len",
    "enforce_eager",
    "sleep_level",
    "max_images_per_prompt",
    "seed",
    "extra",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def header(path: Path) -> str:
    """The comment block that opens the recipe."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def folder(path: Path) -> str:
    return path.relative_to(RECIPES).parts[0]


def data_dir(source: str) -> str:
    return str(Path(source).parent.as_posix())


def load_recipe(path: Path, overrides: list[str]):
    try:
        from mhpo_vl.validation import load_recipe as load
    except ImportError:  # older layout: validation lived in config
        from mhpo_vl.config import load_recipe as load
    return load(path, overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Each prep script run on its fixtures: data folder name -> the temporary folder."""
    sys.path.insert(0, str(DATA))
    import prepare_geometry3k
    import prepare_math
    import prepare_mathvista_mix

    base = tmp_path_factory.mktemp("prepared")
    out = {name: base / Path(name).name for name in PREPARED}
    prepare_geometry3k.main(
        ["--out", str(out["data/geometry3k"]), "--from-local", str(FIX / "geometry3k")]
    )
    prepare_mathvista_mix.main(["--out", str(out["data/mathvista_mix"]), "--from-local", str(FIX)])
    prepare_math.main(["--out", str(out["data/math"]), "--from-local", str(FIX)])
    return out


def test_the_real_recipes_are_all_here():
    assert set(IDS) == EXPECTED
    assert {folder(p) for p in REAL} == set(MODELS)


def test_unprepared_local_paths_do_not_validate(tmp_path):
    """Why the data paths are overridden below: a local path must exist."""
    from mhpo_vl.config import DatasetSpec
    from mhpo_vl.data import check_dataset_spec
    from mhpo_vl.errors import UserError

    missing = tmp_path / "geometry3k" / "train.parquet"
    with pytest.raises(UserError, match="neither a registered dataset"):
        check_dataset_spec(DatasetSpec(source=str(missing)), "data.train")


@pytest.mark.parametrize("path", REAL, ids=IDS)
def test_recipe_validates_offline(path, prepared):
    cfg = raw(path)
    overrides = []
    for key in ("train", "eval"):
        source = cfg["data"][key]["source"]
        target = prepared[data_dir(source)] / Path(source).name
        assert target.is_file(), f"{source}: the prep script does not write {Path(source).name}"
        overrides.append(f"data.{key}.source={target}")
    recipe = load_recipe(path, overrides)
    assert recipe.name == cfg["name"]
    assert recipe.model.path == cfg["model"]["path"]


@pytest.mark.parametrize("path", REAL, ids=IDS)
def test_recipe_header_says_how_to_run_it(path):
    text, rel = header(path), path.relative_to(ROOT).as_posix()
    hw = re.search(r"^Hardware: (\d+)x H100 80GB", text, re.M)
    assert hw, "no 'Hardware: Nx H100 80GB' line"
    n = int(hw.group(1))
    assert f"Launch: torchrun --nproc-per-node {n} -m mhpo_vl train {rel}" in text
    assert f"accelerate launch --num_processes {n} -m mhpo_vl train {rel}" in text
    prep = re.search(r"^Data: python (data/prepare_\w+\.py) --out (\S+)$", text, re.M)
    assert prep, "no 'Data: python data/prepare_....py --out DIR' line"
    script, out = prep.groups()
    assert (ROOT / script).is_file()
    cfg = raw(path)
    for key in ("train", "eval"):
        source = cfg["data"][key]["source"]
        assert data_dir(source) == out, f"data.{key}.source {source} is not under --out {out}"
        assert PREPARED[out][0] == script
    assert Path(cfg["data"]["train"]["source"]).name == "train.parquet"
    assert Path(cfg["data"]["eval"]["source"]).name == "test.parquet"
    strategy = cfg["parallel"]["strategy"]
    assert re.search(r"^Parallel: .*" + {"fsdp": "FSDP", "ddp": "DDP"}[strategy], text, re.M)
    assert "../" not in text


@pytest.mark.parametrize("path", REAL, ids=IDS)
def test_recipe_model_is_a_real_hub_id(path):
    cfg = raw(path)
    hub_id, _, _ = MODELS[folder(path)]
    assert cfg["model"]["path"] == hub_id
    assert HUB_ID.match(hub_id) and not (ROOT / hub_id).exists()


@pytest.mark.parametrize("path", REAL, ids=IDS)
def test_recipe_settings(path):
    cfg = raw(path)
    _, billions, vision = MODELS[folder(path)]
    model, rollout, trainer = cfg["model"], cfg["rollout"], cfg["trainer"]
    # bf16 compute, float32 master weights, activations recomputed
    assert (model["dtype"], model["master_dtype"]) == ("bfloat16", "float32")
    assert model["gradient_checkpointing"] is True
    assert cfg["optim"]["lr"] == pytest.approx(1e-6)
    # sampling as GRPO-family RL samples
    assert rollout["temperature"] == 1.0 and rollout["group_size"] in (5, 8)
    assert 1024 <= rollout["max_new_tokens"] <= 2048
    assert trainer["prompts_per_step"] == 128
    assert "old_logprobs" not in trainer  # auto: follows the engine
    assert "batch_size" not in rollout  # moved to rollout.engine_args
    # vLLM rollouts, with their log-prob mismatch corrected
    assert rollout["engine"] == "vllm"
    args = rollout["engine_args"]
    assert set(args) <= VLLM_ARGS
    assert 0.4 <= args["gpu_memory_utilization"] <= 0.7
    assert args["max_model_len"] >= rollout["max_new_tokens"] + 512
    assert cfg["algorithm"]["rollout_correction"] == {"level": "token", "cap": 2.0}
    # FSDP from 7B up (and wherever the fp32 state would crowd vLLM out); DDP only small
    parallel = cfg["parallel"]
    if billions >= 7:
        assert parallel["strategy"] == "fsdp"
    if parallel["strategy"] == "ddp":
        assert billions < 3 and not parallel.get("cpu_offload", False)
        # 16 bytes per parameter replicated, beside vLLM's share of 80 GB
        assert billions * 16 + args["gpu_memory_utilization"] * 80 < 76
    # evaluation on the held-out split and registered benchmarks
    from mhpo_vl.eval.benchmarks import BENCHMARKS

    assert cfg["eval"]["benchmarks"] and all(b in BENCHMARKS for b in cfg["eval"]["benchmarks"])
    assert cfg["eval"]["temperature"] == 0.0
    # vision models get image data and one image per prompt; text models text data
    has_images = PREPARED[data_dir(cfg["data"]["train"]["source"])][1]
    assert has_images == vision
    assert (args.get("max_images_per_prompt") == 1) == vision
    assert cfg["data"]["template"] == ("think_answer" if vision else "boxed")
    assert trainer["output_dir"] == f"runs/{cfg['name']}"


def test_recipe_names_are_unique():
    names = [raw(p)["name"] for p in REAL]
    assert len(names) == len(set(names))


def test_grpo_baseline_differs_from_mhpo_only_in_the_loss():
    mhpo = raw(RECIPES / "qwen2_5_vl_7b" / "geometry3k_mhpo.yaml")
    grpo = raw(RECIPES / "qwen2_5_vl_7b" / "geometry3k_grpo.yaml")
    assert mhpo["algorithm"].pop("loss")["name"] == "mhpo"
    assert grpo["algorithm"].pop("loss")["name"] == "grpo"
    for cfg in (mhpo, grpo):
        cfg.pop("name")
        cfg["trainer"].pop("output_dir")
    assert mhpo == grpo
