"""``mhpo-vl export RUN_OR_CHECKPOINT``: a model that ships. The slow tests train the
tiny model for 2 steps through the real CLI once, export the run, and read everything
back: the stock classes load it and generate with its chat template, the card's front
matter parses, its recipe and eval table equal the run's files, the curves decode, and
``--push-to-hub`` sends exactly the exported files to a local stand-in of the Hub's HTTP
API (``tests/hub_standin.py``). The fast ones cover the refusals and the pieces."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from mhpo_vl import checkpoint, modelcard, provenance
from mhpo_vl.cli import main
from mhpo_vl.errors import UserError
from mhpo_vl.export import (
    NO_TOKEN,
    VLLM_ARCHITECTURES,
    export_model,
    push_folder,
    upload_files,
    vllm_problems,
)
from mhpo_vl.models import load_policy
from mhpo_vl.models.processors import has_torchvision, load_vl_processor

sys.path.insert(0, str(Path(__file__).parent))
from hub_standin import HubStandIn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2


def _cli(*args: str) -> tuple[int, str, str]:
    """``mhpo-vl ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny model trained for 2 steps by the real CLI, evaluating every step."""
    out = tmp_path_factory.mktemp("export_card") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "train", "recipes/tiny/mhpo.yaml",
         f"trainer.max_steps={STEPS}", "eval.size=8", "eval.every=1",
         f"trainer.output_dir={out}", "trainer.progress_bar=false", "trainer.report_to=[]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """``mhpo-vl export RUN --out OUT``: (OUT, stdout)."""
    out = tmp_path_factory.mktemp("export_card_out") / "model"
    code, stdout, stderr = _cli("export", str(run), "--out", str(out))
    assert code == 0, stderr
    return out, stdout


def _card(out: Path) -> str:
    return (out / "README.md").read_text()


def _metrics(run: Path) -> dict[int, dict]:
    merged: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        merged.setdefault(rec["step"], {}).update(rec)
    return merged


@pytest.mark.slow
def test_a_run_directory_exports_its_latest_complete_checkpoint(run, exported):
    out, stdout = exported
    ckpt = run / f"checkpoint-{STEPS}"
    assert stdout.startswith(f"exporting {ckpt} (the latest complete checkpoint of {run})\n")
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert not (out / checkpoint.STATE_FILE).exists()
    assert "warning" not in stdout  # vLLM's loader finds what it reads
    assert vllm_problems(out) == []
    arch = json.loads((out / "config.json").read_text())["architectures"]
    assert arch and set(arch) <= set(VLLM_ARCHITECTURES)


@pytest.mark.slow
def test_the_export_loads_with_stock_classes_and_chats(exported):
    """AutoModelForImageTextToText loads it; the stock processor class (AutoProcessor
    where torchvision is installed) renders the chat template and the model answers."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    out, _ = exported
    model = AutoModelForImageTextToText.from_pretrained(out)
    if has_torchvision():
        processor = AutoProcessor.from_pretrained(out)
    else:  # transformers' video processors need torchvision: the only thing missing
        with pytest.raises(ImportError, match="(?i)torchvision"):
            AutoProcessor.from_pretrained(out)
        processor = load_vl_processor(str(out), "qwen2_5_vl")  # the stock class, image-only
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    tokenizer = AutoTokenizer.from_pretrained(out)  # the template travels with it too
    assert (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    )
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new) <= 4
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)


@pytest.mark.slow
def test_card_front_matter_and_embedded_recipe_round_trip(run, exported):
    from mhpo_vl.config import recipe_to_dict
    from mhpo_vl.validation import recipe_from_dict

    out, _ = exported
    card = _card(out)
    meta = modelcard.front_matter(card)
    assert meta == {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["mhpo_vl", "reinforcement-learning", "mhpo"],
        "license": "apache-2.0",
    }  # embedded:tiny-vl is no Hub model: no base_model, said in the text instead
    assert "`embedded:tiny-vl`" in card and "names no `base_model`" in card
    embedded = yaml.safe_load(modelcard.recipe_block(card))
    saved = yaml.safe_load((run / f"checkpoint-{STEPS}" / "recipe.yaml").read_text())
    assert embedded == saved
    assert recipe_to_dict(recipe_from_dict(embedded)) == embedded  # a recipe train takes
    assert embedded["trainer"]["max_steps"] == STEPS and embedded["eval"]["size"] == 8
    # the loss and its resolved parameters, the training length, the commit
    assert "- loss: **mhpo** (`c=1.5`, `k_pos=1.5`" in card
    assert f"- steps: {STEPS} (of trainer.max_steps {STEPS})" in card
    assert "16 prompts x group size 8 = 128 completions" in card
    info = provenance.read_run_info(run)
    assert info and info["starts"][0]["start_step"] == 0
    commit = info["starts"][0]["commit"]
    assert commit and re.fullmatch(r"[0-9a-f]{40}", commit)  # tests run from a git checkout
    assert f"commit `{commit}`" in card


@pytest.mark.slow
def test_curves_png_decodes_and_the_card_shows_it(exported):
    out, _ = exported
    with Image.open(out / modelcard.CURVES_FILE) as img:
        img.verify()
    with Image.open(out / modelcard.CURVES_FILE) as img:
        assert img.format == "PNG" and img.width >= 1000 and img.height >= 700  # 2 x 3 panels
    assert f"]({modelcard.CURVES_FILE})" in _card(out)


@pytest.mark.slow
def test_eval_table_equals_metrics_and_says_how_it_was_scored(run, exported):
    out, _ = exported
    card = _card(out)
    metrics = _metrics(run)
    header = f"| metric | key | step 0 (start) | step {STEPS} |"
    assert header in card
    rows = {}
    for line in card.splitlines():
        m = re.fullmatch(r"\| [^|]+ \| `(eval/[^`]+)` \| ([^|]+) \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    at_step = {k: v for k, v in metrics[STEPS].items() if k.startswith("eval/")}
    assert set(rows) == set(at_step) and "eval/accuracy" in rows and len(rows) > 1
    for key, (start, value) in rows.items():
        assert value == pytest.approx(at_step[key], abs=5e-5), key
        assert start == pytest.approx(metrics[0][key], abs=5e-5), key
    for said in (
        "greedy decoding",
        "max_new_tokens: 8 (rollout.max_new_tokens)",
        "the first 8 problems (`eval.size`)",
        "held-out set: `synthetic_vision`, split `test`",
    ):
        assert said in card, said


@pytest.mark.slow
def test_push_to_hub_uploads_the_export_in_one_commit(run, tmp_path):
    """The real huggingface_hub client, through the CLI, against the local stand-in:
    one private repo, one commit holding exactly the exported files, weights by LFS."""
    out = tmp_path / "pushed"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with HubStandIn() as hub:
        env.update(
            HF_ENDPOINT=hub.url, HF_TOKEN="hf_standin", HF_HUB_DISABLE_XET="1",
            HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
        )  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-m", "mhpo_vl", "export", str(run), "--out", str(out),
             "--push-to-hub", "me/tiny-mhpo", "--private"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"pushed to {hub.url}/me/tiny-mhpo"
    state = hub.state
    assert state.unexpected == []
    assert list(state.repos) == ["me/tiny-mhpo"]
    assert state.repos["me/tiny-mhpo"]["visibility"] == "private"
    assert len(state.commits) == 1
    sent = state.commits[0]["files"]
    assert sorted(sent) == upload_files(out) == sorted(p.name for p in out.iterdir())
    for name, data in sent.items():
        assert data == (out / name).read_bytes(), name
    assert {"model.safetensors", modelcard.CURVES_FILE, "README.md"} <= set(sent)
    assert len(state.lfs) == sum(1 for m, _ in state.calls if m == "PUT") >= 1  # weights via LFS


# ---------------------------------------------------------------- fast: refusals


def test_push_without_a_token_stops_before_any_work(tmp_path, monkeypatch):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    out = tmp_path / "out"
    # the source does not even exist: the token is checked first
    code, stdout, stderr = _cli(
        "export", str(tmp_path / "nowhere"), "--out", str(out), "--push-to-hub", "me/x"
    )
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [f"mhpo-vl: error: {NO_TOKEN}"]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--push-to-hub", "not a repo!"], "--push-to-hub not a repo!: not a repo id"),
        (["--private"], "--private: only with --push-to-hub REPO"),
    ],
)
def test_push_arguments_are_checked_first(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    code, _, stderr = _cli("export", str(tmp_path / "nowhere"), "--out", str(tmp_path), *args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_a_hub_error_is_one_line_that_keeps_the_export(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run offline
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    with HubStandIn() as hub:  # the stand-in refuses tokens that do not look like hf_...
        api = HfApi(endpoint=hub.url, token="bad-token")
        with pytest.raises(UserError, match=r"--push-to-hub me/x: .*export in .* is complete"):
            push_folder(tmp_path, "me/x", api=api)
    assert hub.state.commits == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "not a checkpoint folder or run directory (no such folder)"),
        (lambda p: (p.mkdir(), p)[-1], "not a checkpoint folder (no config.json) or run"),
        (
            lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text(""), p)[-1],
            "a run directory without a complete checkpoint-<step>/",
        ),
    ],
)
def test_bad_sources_are_one_line(tmp_path, make, message):
    source = make(tmp_path / "src")
    code, _, stderr = _cli("export", str(source), "--out", str(tmp_path / "out"))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of the embedded tiny-vl model, as the trainer saves one."""
    policy = load_policy("embedded:tiny-vl")
    root = tmp_path_factory.mktemp("saved") / "run"
    return checkpoint.save_checkpoint(
        root, 3, policy.model, policy.processor, {"step": 3}, keep_last=1
    )


def _copy(saved: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "run" / saved.name
    shutil.copytree(saved, ckpt)
    return ckpt


def test_non_finite_weights_are_refused_naming_the_tensor(saved, tmp_path):
    ckpt = _copy(saved, tmp_path)
    weights = load_file(str(ckpt / "model.safetensors"))
    name = sorted(weights)[len(weights) // 2]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    code, _, stderr = _cli("export", str(ckpt), "--out", str(out))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert f"tensor {name} (model.safetensors) holds NaN or Inf" in lines[0]
    assert not out.exists()  # nothing written


def test_a_checkpoint_outside_a_run_gets_a_card_saying_what_is_missing(saved, tmp_path):
    done = export_model(_copy(saved, tmp_path), tmp_path / "out")
    card = _card(done.out)
    assert modelcard.front_matter(card)["pipeline_tag"] == "image-text-to-text"
    assert "commit unknown" in card and "Not recorded with this checkpoint" in card
    assert not (done.out / modelcard.CURVES_FILE).exists()  # no metrics to draw
    assert done.step == 3 and done.chosen == "the checkpoint given"


def test_a_chat_template_saved_the_hub_way_travels(saved, tmp_path):
    """Qwen/Qwen2.5-VL-*'s layout: the processor's template in chat_template.json."""
    ckpt = _copy(saved, tmp_path)
    template = (ckpt / "chat_template.jinja").read_text()
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    done = export_model(ckpt, tmp_path / "out")
    assert "chat_template.json" in done.files and "chat_template.jinja" not in done.files
    assert load_vl_processor(str(done.out), "qwen2_5_vl").chat_template == template


def test_a_missing_chat_template_comes_from_the_base_model_or_stops(saved, tmp_path):
    ckpt = _copy(saved, tmp_path)
    template = (ckpt / "chat_template.jinja").read_text()
    (ckpt / "chat_template.jinja").unlink()
    with pytest.raises(UserError, match="no chat template"):
        export_model(ckpt, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    base = tmp_path / "base"
    base.mkdir()
    (base / "chat_template.jinja").write_text(template)
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump({"model": {"path": str(base)}}))
    done = export_model(ckpt, tmp_path / "out")
    assert (done.out / "chat_template.jinja").read_text() == template
    assert "A local model folder" in _card(done.out)
    assert "base_model" not in modelcard.front_matter(_card(done.out))


def test_a_text_model_exports_for_causal_lm_and_its_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoProcessor

    policy = load_policy("embedded:tiny-text")
    ckpt = checkpoint.save_checkpoint(
        tmp_path / "run", 1, policy.model, policy.processor or policy.tokenizer, {"step": 1},
        keep_last=1,
    )  # fmt: skip
    done = export_model(ckpt, tmp_path / "out")
    assert done.vllm_problems == []
    model = AutoModelForCausalLM.from_pretrained(done.out)
    tokenizer = AutoProcessor.from_pretrained(done.out)  # a text model: the tokenizer
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert ids.shape[1] > inputs["input_ids"].shape[1]
    assert modelcard.front_matter(_card(done.out))["pipeline_tag"] == "text-generation"


# ---------------------------------------------------------------- fast: pieces


def test_every_architecture_mhpo_vl_trains_is_one_vllm_serves():
    """VLLM_ARCHITECTURES (read from vllm 0.33.0's registry) covers the class every
    model type mhpo_vl trains is saved as."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    from mhpo_vl.qwen import TEXT_MODEL_TYPES, VL_MODEL_TYPES

    saved_as = [MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[t] for t in VL_MODEL_TYPES]
    saved_as += [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t] for t in TEXT_MODEL_TYPES]
    assert set(saved_as) <= set(VLLM_ARCHITECTURES)


def test_vllm_check_names_what_its_loader_would_not_take(saved, tmp_path):
    out = export_model(_copy(saved, tmp_path), tmp_path / "out").out
    assert vllm_problems(out) == []
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(
        json.dumps({**config, "architectures": ["LlavaForConditionalGeneration"]})
    )
    weights = load_file(str(out / "model.safetensors"))
    save_file({**weights, "extra.weight": torch.ones(1)}, str(out / "model.safetensors"))
    (out / "processor_config.json").unlink()
    problems = vllm_problems(out)
    assert any(
        "'LlavaForConditionalGeneration' is not one vLLM 0.33.0 serves" in p for p in problems
    )
    (out / "config.json").write_text(json.dumps(config))
    problems = vllm_problems(out)
    assert any("weight names vLLM does not map: extra.weight" in p for p in problems)
    assert any("no processor_config.json" in p for p in problems)


def test_run_info_records_each_start_and_the_commit(tmp_path):
    provenance.record_start(tmp_path, 0)
    provenance.record_start(tmp_path, 5)
    provenance.record_start(tmp_path, 5)  # a second resume from the same step replaces it
    starts = provenance.read_run_info(tmp_path)["starts"]
    assert [s["start_step"] for s in starts] == [0, 5]
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert starts[0]["commit"] == head and starts[0]["version"]
    assert [s["start_step"] for s in provenance.commits_up_to({"starts": starts}, 5)] == [0]
    assert [s["start_step"] for s in provenance.commits_up_to({"starts": starts}, 6)] == [0, 5]
    assert "resumed at step 5" in modelcard.commit_text({"starts": starts}, 9)
    assert modelcard.commit_text(None, 9).startswith("commit unknown")


def test_base_model_and_eval_labels():
    assert modelcard.hub_base_model("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert modelcard.hub_base_model("embedded:tiny-vl") is None
    assert modelcard.base_license("Qwen/Qwen2.5-VL-7B-Instruct") == "apache-2.0"
    assert modelcard.base_license("someone/unknown-model") is None
    assert modelcard.metric_label("eval/accuracy") == "held-out"
    assert modelcard.metric_label("eval/accuracy/count_all") == "held-out, task count_all"
    assert modelcard.metric_label("eval/mathvista/accuracy") == "mathvista"
    records = [{"step": 0, "eval/accuracy": 0.5}, {"step": 3, "loss": 1.0}]
    assert modelcard.eval_at(records, 3) == (0, {"eval/accuracy": 0.5})  # the last one before


def test_push_in_offline_mode_stops_before_any_work(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, stderr = _cli(
        "export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--push-to-hub", "me/x"
    )
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "HF_HUB_OFFLINE is set" in lines[0]


def test_a_sharded_checkpoint_with_a_non_finite_tensor_is_refused(saved, tmp_path):
    """The fsdp layout (torch.distributed.checkpoint, here written by one process): the
    tensors are checked as they are read, and nothing of the weights stays behind."""
    import torch.distributed.checkpoint as dcp

    ckpt = _copy(saved, tmp_path)
    state = load_policy(str(ckpt)).model.state_dict()
    bad = sorted(state)[1]
    tensors = {f"model.{k}": v.clone() for k, v in state.items()}
    dcp.save(tensors, checkpoint_id=str(ckpt / checkpoint.SHARDED_DIR), no_dist=True)
    (ckpt / "model.safetensors").unlink()
    good = export_model(ckpt, tmp_path / "good").out  # first the finite one: as saved
    a, b = load_file(str(good / "model.safetensors")), load_file(str(saved / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tensors[f"model.{bad}"].view(-1)[0] = float("inf")
    shutil.rmtree(ckpt / checkpoint.SHARDED_DIR)
    dcp.save(tensors, checkpoint_id=str(ckpt / checkpoint.SHARDED_DIR), no_dist=True)
    with pytest.raises(UserError, match=rf"tensor {re.escape(bad)} \(sharded\) holds NaN or Inf"):
        export_model(ckpt, tmp_path / "bad")
    assert not list((tmp_path / "bad").glob("model*.safetensors"))


def test_a_hub_base_model_is_named_in_the_front_matter():
    recipe = (
        "name: geo\nmodel: {path: Qwen/Qwen2.5-VL-7B-Instruct}\nalgorithm: {loss: {name: grpo}}\n"
    )
    inputs = modelcard.CardInputs(
        config={"architectures": ["Qwen2_5_VLForConditionalGeneration"], "vision_config": {}},
        checkpoint="checkpoint-7", step=7, recipe_text=recipe,
    )  # fmt: skip
    card = modelcard.render_card(inputs)
    assert modelcard.front_matter(card) == {
        "library_name": "transformers",
        "base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "pipeline_tag": "image-text-to-text",
        "tags": ["mhpo_vl", "reinforcement-learning", "grpo"],
        "license": "apache-2.0",
    }
    assert "- loss: **grpo** (`clip_low=0.2`, `clip_high=0.2`, `clip_c=None`)" in card
    assert modelcard.recipe_block(card) == recipe
    assert "The run logged no eval at or before this step." in card
