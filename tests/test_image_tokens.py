"""One image, the same vision tokens everywhere: the trainer, the hf engine and vLLM must
turn an image into the same ``image_grid_thw`` and the same number of ``<|image_pad|>``
tokens, else a rollout is scored and trained on a prompt the sampler never saw.

For images that are tiny, below ``min_pixels``, of odd size, very wide, and over
``max_pixels``, decoded by the data loader (:func:`mhpo_vl.data.images.decode_image`, as
a recipe's rows are), this compares:

1. the trainer: :func:`mhpo_vl.rollout.encode.encode_prompts` (the prompt tensors every
   rollout batch carries into the trainer's forward) and the loader's own count
   (:func:`mhpo_vl.models.processors.image_tokens`, what ``data.max_prompt_tokens``
   checks);
2. the hf engine: :meth:`mhpo_vl.rollout.hf.HFEngine.generate`, run;
3. vLLM: the ``vllm.LLM`` arguments and the request the vllm engine builds
   (:class:`mhpo_vl.rollout.vllm.VLLMEngine` on ``tests/vllm_standin.py``), then what vLLM
   0.33.0 does with them, followed step by step below (:func:`vllm_processes`): its
   own processor from the model directory with ``mm_processor_kwargs`` merged in, the
   placeholder expansion from the grid it returns, and its separate token count.

Processors: the embedded tiny model's, and Qwen2.5-VL's published image settings
(``preprocessor_config.json`` of Qwen/Qwen2.5-VL-7B-Instruct: 3,136 to 12,845,056
pixels, 14-pixel patches merged 2 x 2), with and without the real recipes'
``data.min_pixels`` / ``data.max_pixels``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import vllm_standin
from PIL import Image, ImageDraw
from transformers import AutoConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mhpo_vl.data.images import decode_image
from mhpo_vl.data.templates import build_prompts
from mhpo_vl.embedded import resolve
from mhpo_vl.models import load_policy
from mhpo_vl.models.processors import IMAGE_ONLY_PROCESSORS, image_tokens
from mhpo_vl.rollout import HFEngine, SamplingParams
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.rollout.vllm import KEY, VLLMEngine

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # (width, height)
    "tiny": (5, 5),
    "below_min": (40, 30),
    "odd": (333, 517),
    "very_wide": (3000, 20),
    "over_max": (4000, 3300),  # 13.2M pixels: over Qwen2.5-VL's 12.8M
}
# Qwen/Qwen2.5-VL-7B-Instruct's preprocessor_config.json (the 3B's is the same)
QWEN25_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
}
RECIPE_PIXELS = (262_144, 1_003_520)  # data.min_pixels / max_pixels of the Qwen-VL recipes
# the hf engine is run where the prompt fits the tiny models' 4,096 positions
HF_MAX_IMAGE_TOKENS = 2048
# the trainer's processor with other limits than the model directory's, which vLLM loads
PINNED_SIZE = {"shortest_edge": 50_176, "longest_edge": 200_704}  # 64 to 256 tokens
SETUPS = {  # name -> (model, data.min_pixels / data.max_pixels)
    "tiny": ("tiny", (None, None)),
    "qwen25": ("qwen25", (None, None)),
    "qwen25_recipe": ("qwen25", RECIPE_PIXELS),
    "qwen25_pinned": ("qwen25_pinned", (None, None)),
}


@pytest.fixture(scope="module")
def standin():
    with pytest.MonkeyPatch.context() as mp:
        yield vllm_standin.install(mp)


@pytest.fixture(scope="module")
def models(tmp_path_factory, standin):
    """name -> (policy, its hf engine, its vllm engine on the stand-in). ``qwen25`` is the
    tiny Qwen2.5-VL with Qwen2.5-VL's published image processor settings;
    ``qwen25_pinned`` the same directory, its loaded processor's limits then changed
    (vLLM sees them only through the engine's ``mm_processor_kwargs``)."""
    folder = tmp_path_factory.mktemp("qwen25")
    shutil.copytree(resolve("tiny-vl"), folder, dirs_exist_ok=True)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"] = dict(QWEN25_PREPROCESSOR)
    (folder / "processor_config.json").write_text(json.dumps(config))
    out = {}
    for name, path in (
        ("tiny", "embedded:tiny-vl"),
        ("qwen25", str(folder)),
        ("qwen25_pinned", str(folder)),
    ):
        policy = load_policy(path)
        if name == "qwen25_pinned":
            size = policy.processor.image_processor.size
            size.shortest_edge, size.longest_edge = PINNED_SIZE.values()
        vllm = VLLMEngine(policy, **VLLMEngine.check_args({"max_model_len": 4096}, KEY))
        out[name] = (policy, HFEngine(policy), vllm)
    size = out["qwen25"][0].processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)
    return out


def _image(tmp_path: Path, size: tuple[int, int], pixels: tuple) -> Image.Image:
    """A PNG of ``size`` as the data loader decodes it with ``pixels`` (min, max)."""
    image = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    ImageDraw.Draw(image).rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(200, 30, 30))
    image.save(tmp_path / "img.png", compress_level=1)
    lo, hi = pixels
    return decode_image("img.png", tmp_path, min_pixels=lo, max_pixels=hi)


# --- what vLLM 0.33.0 does with the engine's arguments and request


def _merged_kwargs(init_kwargs: dict, request: dict) -> dict:
    """``MultiModalConfig.merge_mm_processor_kwargs`` (vllm/config/multimodal.py): the
    engine's ``mm_processor_kwargs``, then the request's over them."""
    configured = init_kwargs.get("mm_processor_kwargs") or {}
    return {**configured, **(request.get("mm_processor_kwargs") or {})}


def _vision_info_tokens(processor, hf_config, merged: dict, size: tuple[int, int]) -> int:
    """``Qwen2VLProcessingInfo._get_vision_info`` (vllm/model_executor/models/qwen2_vl.py),
    vLLM's count that does not run the processor: the flat kwargs the image processor
    declares are routed into ``images_kwargs``
    (``BaseProcessingInfo._merge_and_resolve_mm_processor_kwargs``); ``_get_vision_size``
    starts from the image processor's ``size`` and lets ``size``, then ``min_pixels`` /
    ``max_pixels`` override its edges; transformers' ``smart_resize`` with the patch and
    merge sizes of the model's ``vision_config``."""
    supported = set(processor.image_processor.valid_kwargs.__annotations__)
    scoped = {k: v for k, v in merged.items() if k in supported}
    default = processor.image_processor.size
    edges = {"shortest_edge": default.shortest_edge, "longest_edge": default.longest_edge}
    edges.update(scoped.get("size") or {})
    for edge, key in (("shortest_edge", "min_pixels"), ("longest_edge", "max_pixels")):
        if scoped.get(key) is not None:
            edges[edge] = scoped[key]
    vision = hf_config.vision_config
    patch, merge = vision.patch_size, vision.spatial_merge_size
    width, height = size
    h, w = smart_resize(height, width, patch * merge, edges["shortest_edge"], edges["longest_edge"])
    return (h // patch) * (w // patch) // merge**2


def vllm_processes(init_kwargs: dict, request: dict) -> tuple[list[int], torch.Tensor, list[int]]:
    """``(prompt token ids, image_grid_thw, per-image token counts)`` vLLM 0.33.0 makes of
    ``request`` (a ``TokensPrompt``) in an ``LLM`` built with ``init_kwargs``.

    - The processor (``InputProcessingContext.get_hf_processor`` ->
      ``cached_processor_from_config``, vllm/transformers_utils/processor.py) is the
      model directory's, built by ``<Processor>.from_pretrained(model, **merged kwargs)``
      (here the image-only subclass of the same stock class: the stock one needs
      torchvision for its video processor).
    - ``_get_hf_mm_inputs`` (vllm/multimodal/processing/processor.py): Qwen2-VL gives the
      HF processor no text (``_get_hf_mm_text`` is None), only the images, with
      ``truncation=False``; ``InputProcessingContext.call_hf_processor`` merges the
      engine's ``mm_processor_kwargs`` in again as call arguments.
    - ``Qwen2VLMultiModalProcessor._get_prompt_updates``: each image's one
      ``<|image_pad|>`` placeholder becomes ``grid_thw.prod() // merge_size**2`` of them.
    """
    model = init_kwargs["model"]
    hf_config = AutoConfig.from_pretrained(model)
    merged = _merged_kwargs(init_kwargs, request)
    processor = IMAGE_ONLY_PROCESSORS[hf_config.model_type].from_pretrained(model, **merged)
    images = request["multi_modal_data"]["image"]
    limit = init_kwargs["limit_mm_per_prompt"]["image"]
    assert len(images) <= limit, "vLLM refuses more images than limit_mm_per_prompt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # min/max_pixels as call arguments
        out = processor(images=images, truncation=False, return_tensors="pt", **merged)
    grid = out["image_grid_thw"]
    merge = processor.image_processor.merge_size**2
    pad = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    ids, cursor = [], 0
    prompt = list(request["prompt_token_ids"])
    for thw in grid:
        at = prompt.index(pad, cursor)
        ids += prompt[cursor:at] + [pad] * (int(thw.prod()) // merge)
        cursor = at + 1
    ids += prompt[cursor:]
    counts = [_vision_info_tokens(processor, hf_config, merged, img.size) for img in images]
    return ids, grid, counts


# --- the test


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("setup", list(SETUPS), ids=list(SETUPS))
def test_trainer_hf_engine_and_vllm_see_the_same_image_tokens(models, tmp_path, setup, size):
    model, pixels = SETUPS[setup]
    policy, hf_engine, vllm_engine = models[model]
    image = _image(tmp_path, SIZES[size], pixels)
    row = {"id": size, "question": "What is red?", "answer": "a square", "choices": None,
           "image": image}  # fmt: skip
    prompts = build_prompts([row], "think_answer")
    pad = policy.processor.image_token_id

    # 1. the trainer: the encoded prompt, and the loader's count for data.max_prompt_tokens
    enc = encode_prompts(policy, prompts)
    ours = enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
    grid = enc.extra["image_grid_thw"]
    tokens = ours.count(pad)
    assert grid.shape == (1, 3) and tokens == int(grid.prod()) // 4 > 0
    assert image_tokens(policy.processor, image.size) == tokens

    # 2. the hf engine, generating (where the prompt fits the tiny model's context)
    if tokens <= HF_MAX_IMAGE_TOKENS:
        batch = hf_engine.generate(prompts, SamplingParams(n=1, max_new_tokens=1, temperature=0))
        assert torch.equal(batch.extra["image_grid_thw"], grid)
        assert int((batch.input_ids == pad).sum()) == tokens
    else:  # only Qwen2.5-VL's own limit lets an image be this many tokens
        assert (setup, size) == ("qwen25", "over_max") and tokens > 12_000

    # 3. vLLM: the engine's arguments and request, processed as vLLM 0.33.0 does
    request = vllm_engine._request(0, ours, prompts[0]).request
    assert request["prompt_token_ids"].count(pad) == 1  # the placeholder vLLM expands
    theirs, vllm_grid, counts = vllm_processes(vllm_engine.llm.init_kwargs, request)
    assert torch.equal(vllm_grid, grid)
    assert theirs == ours
    assert counts == [tokens]


def test_the_recipes_pixel_limits_reach_vllm_through_the_image(models, tmp_path):
    """``data.min_pixels`` / ``data.max_pixels`` resize the image as it is decoded, so
    vLLM gets them with the image itself; its processor keeps the model's own limits,
    the trainer's (``mm_processor_kwargs`` = the policy's image processor)."""
    policy, _, vllm_engine = models["qwen25"]
    assert vllm_engine.llm.init_kwargs["mm_processor_kwargs"] == {
        "min_pixels": 3136,
        "max_pixels": 12845056,
    }
    big = _image(tmp_path, SIZES["over_max"], RECIPE_PIXELS)
    small = _image(tmp_path, SIZES["below_min"], RECIPE_PIXELS)
    assert big.width * big.height <= RECIPE_PIXELS[1] < 4000 * 3300
    assert small.width * small.height >= 0.99 * RECIPE_PIXELS[0] > 40 * 30  # upscaled
    # what the recipes' comments promise: at most 1,280 tokens (28 x 28 pixels each)
    assert image_tokens(policy.processor, big.size) <= 1280
    assert image_tokens(policy.processor, small.size) >= 0.99 * RECIPE_PIXELS[0] / 28**2


def test_vllm_counts_with_the_same_smart_resize():
    """vLLM imports ``smart_resize`` from transformers' torchvision image processor
    module, which this (torchvision-free) install cannot import; the PIL module's copy
    used above is the same function, token for token."""
    fast = importlib.util.find_spec("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    pil = importlib.util.find_spec("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")

    def body(origin: str) -> str:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
        (fn,) = [
            n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize"
        ]
        fn.body = [s for s in fn.body if not isinstance(s, ast.Expr)]  # the docstring
        return ast.dump(fn)

    assert body(fast.origin) == body(pil.origin)
    assert smart_resize(20, 3000, 28, 3136, 12845056) == (28, 2996)
    assert math.prod(smart_resize(4000, 5000, 28, 3136, 12845056)) <= 12845056


def test_qwen_vl_utils_is_not_a_dependency():
    """Its ``smart_resize`` / ``fetch_image`` are not used: the HF image processor does the
    same resize (with vLLM running that processor itself), and the module imports
    torchvision at import time, which the CPU install does not have."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "qwen-vl-utils" not in text and "qwen_vl_utils" not in text
    for path in (ROOT / "mhpo_vl").rglob("*.py"):
        assert "qwen_vl_utils" not in path.read_text(encoding="utf-8"), path
