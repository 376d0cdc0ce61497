"""Pin the trainer's behaviour: weight digests of tiny recipes after a few steps.

Before moving code, record the digests (``--write``); after, check them (the default).
A refactor that keeps behaviour leaves every parameter bit-identical. The cases run the
plain paths the digests were first recorded with: ``trainer.shared_prefix=false`` (the
shared-prefix forward, on by default since, gives the same values up to float rounding
and keeps prompt groups together in minibatches: exact in math, not bit for bit) and
the hf engine's ``prefill_once=false`` (prefilling each prompt once per group computes
the first step's logits by another forward: the same up to about 1e-6). Digests depend on
the CPU kernels, so the file records the torch version and CPU capability they were
made with, and a check on another setting says so instead of failing.

    python scripts/pin_weights.py --write      # before the change
    python scripts/pin_weights.py              # after: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN_FILE = ROOT / "tests" / "data" / "pinned_weights.json"
STEPS = 3
# recipe -> extra overrides: the default, dynamic sampling + KL + overlong, text-only
CASES = {
    "recipes/tiny/mhpo.yaml": [],
    "recipes/tiny/dapo.yaml": ["algorithm.kl_coef=0.01", "trainer.update_epochs=2"],
    "recipes/tiny/mhpo_text.yaml": ["trainer.micro_batch_size=24"],
}


def setting() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def digest(checkpoint: Path) -> dict[str, str]:
    """sha256 of every tensor's bytes, by name (plus one over all of them)."""
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        tensors.update(load_file(f))
    out, total = {}, hashlib.sha256()
    for name in sorted(tensors):
        h = hashlib.sha256(tensors[name].contiguous().view(-1).view(dtype=_u8()).numpy())
        out[name] = h.hexdigest()[:16]
        total.update(h.digest())
    out["__all__"] = total.hexdigest()
    return out


def _u8():
    import torch

    return torch.uint8


def run_case(recipe: str, extra: list[str], workdir: Path) -> dict[str, str]:
    out = workdir / Path(recipe).stem
    cmd = [
        sys.executable, "-m", "mhpo_vl", "train", str(ROOT / recipe),
        f"trainer.max_steps={STEPS}", f"trainer.output_dir={out}", "trainer.save_every=0",
        "eval.at_start=false", "eval.every=0", "eval.size=8", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "trainer.shared_prefix=false",
        "rollout.engine_args.prefill_once=false",
        # the lr schedule the digests were recorded with (the tiny recipes now decay
        # theirs; pinning the code's behaviour, not the recipe's choice)
        "optim.scheduler=constant", *extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    return digest(out / f"checkpoint-{STEPS}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record the digests")
    ap.add_argument("--only", nargs="*", help="recipes to run (default: all cases)")
    args = ap.parse_args()
    cases = {k: v for k, v in CASES.items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        found = {r: run_case(r, extra, Path(tmp)) for r, extra in cases.items()}
    if args.write:
        PIN_FILE.write_text(json.dumps({"setting": setting(), "cases": found}, indent=1) + "\n")
        print(f"wrote {PIN_FILE}")
        return 0
    pinned = json.loads(PIN_FILE.read_text())
    if pinned["setting"] != setting():
        print(f"pinned on {pinned['setting']}, this is {setting()}: not comparable")
        return 0
    bad = 0
    for recipe, got in found.items():
        want = pinned["cases"][recipe]
        diff = [k for k in want if got.get(k) != want[k]]
        print(f"{'same' if not diff else 'DIFFERENT'}  {recipe}  ({len(diff)} tensors differ)")
        bad += bool(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
