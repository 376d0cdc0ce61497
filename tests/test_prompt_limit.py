"""``data.max_prompt_tokens``: rows whose prompt is too long are dropped at load, counted
and named (row id, its token count, the limit), before any rollout.

The count is checked against the real processor of the embedded model (what
``encode_prompts`` hands the model), vision tokens included; a 50,000-token question
and a huge image are dropped from a real local dataset, and the rest still trains.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from test_train_e2e import _metrics, _train

from mhpo_vl.config import DatasetSpec
from mhpo_vl.data import load_problems
from mhpo_vl.data.images import decode_image
from mhpo_vl.data.loading import _Checks
from mhpo_vl.data.templates import build_prompts
from mhpo_vl.models import load_policy
from mhpo_vl.models.processors import PromptLimit, image_tokens
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.validation import recipe_from_dict

# Qwen2.5-VL's own image limits (its preprocessor_config.json): 4 to 16,384 vision tokens
QWEN25_SIZE = {"shortest_edge": 3136, "longest_edge": 12_845_056}


@pytest.fixture(scope="module")
def policy():
    return load_policy("embedded:tiny-vl")


def _qwen25_processor(policy):
    """The embedded processor with Qwen2.5-VL's image limits (a large image is many
    vision tokens, as on the real model)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    proc = policy.processor
    ip = Qwen2VLImageProcessorPil(size=QWEN25_SIZE, patch_size=14, merge_size=2)
    return type(proc)(
        image_processor=ip, tokenizer=proc.tokenizer, chat_template=proc.chat_template
    )


def _row(question="What color is the square?", size=None, **extra):
    image = Image.new("RGB", size, (200, 30, 30)) if size else None
    return {"id": "r", "question": question, "choices": ["red", "green"], "answer": "red",
            "image": image, **extra}  # fmt: skip


@pytest.mark.parametrize("size", [(40, 30), (56, 56), (84, 84), (300, 200), (1000, 20)])
@pytest.mark.parametrize("template", ["plain", "think_answer"])
def test_count_equals_the_processors_encoding(policy, size, template):
    limit = PromptLimit(policy.processor, True, 10_000, template, "Be brief.")
    row = _row(size=size)
    encoded = encode_prompts(policy, build_prompts([row], template, "Be brief."))
    count = limit.count(row, [size])
    assert count.exact and count.total == encoded.input_ids.shape[1]
    pads = (encoded.input_ids == policy.processor.image_token_id).sum().item()
    assert count.image == image_tokens(policy.processor, size) == pads


def test_vision_tokens_follow_the_processors_limits(policy):
    """With Qwen2.5-VL's limits a 2000 x 1500 image is thousands of tokens, as the real
    processor makes it (checked against its grid, without a forward)."""
    proc = _qwen25_processor(policy)
    for size in [(28, 28), (640, 480), (2000, 1500)]:
        enc = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"],
                   images=[Image.new("RGB", size)], return_tensors="pt")  # fmt: skip
        assert image_tokens(proc, size) == (enc.input_ids == proc.image_token_id).sum().item()
    assert image_tokens(proc, (2000, 1500)) > 3000


class _NoTokenizer:
    """A processor whose tokenizer must not be used."""

    def __init__(self, processor):
        self._processor = processor

    def __getattr__(self, name):
        return getattr(self._processor, name)

    @property
    def tokenizer(self):
        raise AssertionError("tokenized a prompt that the byte bound shows fits")


def test_short_prompts_fit_without_tokenizing(policy):
    limit = PromptLimit(_NoTokenizer(policy.processor), True, 1024, "think_answer", "Be brief.")
    assert limit.problem(_row(), (84, 84)) is None
    with pytest.raises(AssertionError, match="tokenized"):
        limit.problem(_row(question="word " * 300), (84, 84))


def test_a_50000_token_question_is_counted_fast(policy):
    limit = PromptLimit(policy.processor, True, 1024, "plain")
    start = time.perf_counter()
    detail = limit.problem(_row(question="word " * 10_000), None)
    assert time.perf_counter() - start < 2.0
    assert detail.startswith("prompt is 50,") and "over data.max_prompt_tokens 1,024" in detail
    start = time.perf_counter()
    detail = limit.problem(_row(question="word " * 2_000_000), None)  # 10 MB
    assert time.perf_counter() - start < 3.0
    assert detail.startswith("prompt is at least ")


@pytest.mark.parametrize(
    "size, min_pixels, max_pixels",
    [((40, 30), None, None), ((40, 30), 10_000, None), ((900, 700), None, 50_000),
     ((5000, 4000), None, None), ((300, 7), 4000, 20_000)],
)  # fmt: skip
def test_decoded_size_is_what_decode_image_gives(tmp_path, size, min_pixels, max_pixels):
    path = tmp_path / "img.png"
    Image.new("RGB", size, (1, 2, 3)).save(path)
    checks = _Checks(tmp_path, None, min_pixels, max_pixels)
    decoded = decode_image("img.png", tmp_path, min_pixels=min_pixels, max_pixels=max_pixels,
                           max_image_pixels=None)  # fmt: skip
    assert checks.decoded_size("img.png") == decoded.size


def _dataset(root: Path) -> Path:
    """Ten rows: eight good ones, a 50,000-token question and a 4000 x 3000 image."""
    img = root / "img"
    img.mkdir()
    rows = []
    for i, color in enumerate(["red", "green"] * 4):
        Image.new("RGB", (56, 56), (200, 30, 30) if color == "red" else (30, 200, 30)).save(
            img / f"ok{i}.png"
        )
        rows.append({"id": f"ok{i}", "image": f"img/ok{i}.png", "answer": color})
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(img / "huge.png")
    rows.insert(2, {"id": "long_q", "image": "img/ok0.png", "answer": "red",
                    "question": "What color is the square? " + "word " * 10_000})  # fmt: skip
    rows.insert(5, {"id": "huge_img", "image": "img/huge.png", "answer": "red"})
    path = root / "train.jsonl"
    with open(path, "w") as fh:
        for row in rows:
            row = {"question": "What color is the square?", "choices": ["red", "green"], **row}
            fh.write(json.dumps(row) + "\n")
    return path


def test_load_drops_long_prompts_and_names_them(tmp_path, policy):
    path = _dataset(tmp_path)
    limit = PromptLimit(_qwen25_processor(policy), True, 1024, "plain")
    start = time.perf_counter()
    problems = load_problems(DatasetSpec(source=str(path)), "data.train", max_bad_frac=0.5,
                             prompt_limit=limit)  # fmt: skip
    assert time.perf_counter() - start < 10
    assert len(problems) == 8 and problems.dropped == {"prompt_too_long": ["long_q", "huge_img"]}
    details = {r.id: r.detail for r in problems.bad_rows}
    assert details["long_q"].startswith("prompt is 50,")
    assert "(50," in details["long_q"] and "+ 4 image)" in details["long_q"]
    assert (
        "image)" in details["huge_img"]
        and "over data.max_prompt_tokens 1,024" in (details["huge_img"])
    )
    assert problems.bad_row_metrics()["data/bad_rows/prompt_too_long"] == 2
    assert load_problems(DatasetSpec(source=str(path)), "data.train").dropped == {}


def _recipe(**data):
    tree = {"data": data, "rollout": {"engine": "vllm", "max_new_tokens": 2048,
            "engine_args": {"max_model_len": 4096}}}  # fmt: skip
    return recipe_from_dict(tree, ["trainer.output_dir=/tmp/mhpo_vl_prompt_limit"])


def test_recipe_check_prompt_plus_response_fits_max_model_len():
    from mhpo_vl.errors import UserError

    assert _recipe(max_prompt_tokens=2048).data.max_prompt_tokens == 2048
    with pytest.raises(UserError, match=r"^data.max_prompt_tokens: must be <= rollout.engine_"
                       r"args.max_model_len \(4096\) - rollout.max_new_tokens \(2048\) = 2048, "
                       r"got 2049$"):  # fmt: skip
        _recipe(max_prompt_tokens=2049)
    with pytest.raises(UserError, match="data.max_prompt_tokens: must be"):
        recipe_from_dict({}, ["data.max_prompt_tokens=0"])


@pytest.mark.slow
def test_training_drops_long_prompts_at_load_and_trains_on_the_rest(tmp_path):
    """Through the real CLI: a model whose processor has Qwen2.5-VL's image limits, the
    dataset above; both rows are named before the first rollout and the run trains."""
    from mhpo_vl.embedded import resolve

    model = tmp_path / "model"
    shutil.copytree(resolve("tiny-vl"), model)
    config = json.loads((model / "processor_config.json").read_text())
    config["image_processor"]["size"] = QWEN25_SIZE
    (model / "processor_config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    res = _train(
        "recipes/tiny/mhpo.yaml", out, f"model.path={model}",
        f"data.train.source={_dataset(tmp_path)}", "data.eval=null", "data.max_bad_frac=0.5",
        "data.max_prompt_tokens=1024", "trainer.max_steps=2", "eval.at_start=false",
        "eval.every=0", "trainer.save_every=0",
    )  # fmt: skip
    assert "long_q" in res.stderr and "huge_img" in res.stderr and "prompt_too_long" in res.stderr
    assert "over data.max_prompt_tokens 1,024" in res.stderr
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    assert records[-1]["data/bad_rows/prompt_too_long"] == 2


@pytest.mark.parametrize("flag", [[], ["--max-prompt-tokens", "256"]], ids=["default", "flag"])
def test_eval_run_drops_long_prompts_before_sampling(tmp_path, caplog, flag):
    from mhpo_vl.cli import main

    data = tmp_path / "math500.jsonl"
    records = [{"unique_id": "short1", "problem": "What is 2 + 3?", "answer": "5"},
               {"unique_id": "long", "problem": "What is " + "word " * 10_000, "answer": "1"},
               {"unique_id": "short2", "problem": "What is 1 + 1?", "answer": "2"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    code = main(["eval", "run", "--model", "embedded:tiny-vl", "--benchmarks", "math500",
                 "--data", f"math500={data}", "--out-dir", str(out), "--max-new-tokens", "4",
                 "--temperature", "0", *flag])  # fmt: skip
    assert code == 0
    results = json.loads((out / "math500" / "results.json").read_text())
    assert results["settings"]["n_problems"] == 2
    assert results["settings"]["max_prompt_tokens"] == (256 if flag else 4096 - 4)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "long" in warned and "prompt_too_long" in warned and "prompt is 50," in warned
    assert ("over --max-prompt-tokens 256" if flag else "the model's context 4,096") in warned
