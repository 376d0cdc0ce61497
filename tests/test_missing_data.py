"""A recipe whose local data do not exist yet stops at ``mhpo-vl validate`` and at the
start of ``mhpo-vl train``, before any model is loaded, with one line that names the
key, the path and the ``data/prepare_*.py`` command that makes the data:

    <recipe>: dataset not found: data/geometry3k/train.parquet (data.train.source);
    make it with: python data/prepare_geometry3k.py --out data/geometry3k (...)

Every shipped recipe with local data is validated here from an empty working directory
(so its relative ``data/...`` paths cannot exist whatever has been prepared in the
checkout), and the command in its message is compared with its header's ``# Data:``
line. The recipes validating against prepared (fixture) data is
tests/test_recipes_real.py's job.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mhpo_vl.cli import main
from mhpo_vl.data import DATASETS
from mhpo_vl.data.loading import _looks_like_hub_id
from mhpo_vl.data.validate import prepare_command, recipe_data_command
from mhpo_vl.errors import UserError
from mhpo_vl.validation import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
MESSAGE = re.compile(
    r"^(?P<recipe>\S+\.yaml): dataset not found: (?P<path>\S+) \((?P<key>data\.\w+\.source)\); "
    r"make it with: (?P<command>.+?) \((?P<origin>[^()]+)\), or fix the path$"
)


def _local(source: str) -> bool:
    return source not in DATASETS and not _looks_like_hub_id(source)


def _sources(path: Path) -> dict[str, str]:
    """``{"train": source, "eval": source}`` of the recipe's local data files."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))["data"]
    return {
        key: data[key]["source"]
        for key in ("train", "eval")
        if data.get(key) and _local(data[key]["source"])
    }


SHIPPED = sorted(p for p in RECIPES.rglob("*.yaml") if _sources(p))
IDS = [p.relative_to(RECIPES).as_posix() for p in SHIPPED]


def _header_command(path: Path) -> str:
    """The ``# Data:`` line of the recipe, read here independently of the package."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# Data: "):
            return line[len("# Data: ") :].strip()
    raise AssertionError(f"{path}: no '# Data:' header line")


def _error(recipe: Path, *overrides: str) -> re.Match:
    with pytest.raises(UserError) as info:
        load_recipe(recipe, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    match = MESSAGE.match(message)
    assert match, message
    return match


def test_every_shipped_recipe_with_local_data_is_covered():
    """The real recipes and the paper-table rows all read prepared local files; the
    tiny recipes read the built-in synthetic data (no prepare step)."""
    folders = {p.relative_to(RECIPES).parts[0] for p in SHIPPED}
    assert "tiny" not in folders and {"paper", "qwen2_5_vl_7b", "qwen3_4b_base"} <= folders
    assert len(SHIPPED) >= 25


@pytest.mark.parametrize("recipe", SHIPPED, ids=IDS)
def test_validate_without_data_names_key_path_and_header_command(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's relative data paths cannot exist here
    sources = _sources(recipe)
    command = _header_command(recipe)
    m = _error(recipe)
    assert (m["recipe"], m["key"]) == (str(recipe), "data.train.source")
    assert m["path"] == sources["train"]
    assert m["command"] == command and m["origin"].startswith("the recipe's Data: line")
    assert re.fullmatch(r"python data/prepare_\w+\.py --out \S+", command)
    # train prepared, eval not: the eval split is named, with the same command
    train = tmp_path / sources["train"]
    train.parent.mkdir(parents=True)
    train.write_bytes(b"")
    m = _error(recipe)
    assert (m["key"], m["path"], m["command"]) == ("data.eval.source", sources["eval"], command)


def test_validate_cli_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    recipe = RECIPES / "qwen2_5_vl_7b" / "geometry3k_mhpo.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(recipe)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"mhpo-vl: error: {recipe}: dataset not found: data/geometry3k/train.parquet "
        "(data.train.source); make it with: python data/prepare_geometry3k.py --out "
        "data/geometry3k (the recipe's Data: line; run it from the repository root), or "
        "fix the path\n"
    )


TRAIN_PROBE = """
import sys, time
from mhpo_vl.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
loaded = sorted(m for m in sys.modules if m.startswith(("mhpo_vl.trainer", "mhpo_vl.training")))
print("RESULT", code, round(seconds, 2), ",".join(loaded) or "-")
"""


def test_train_stops_before_loading_the_model(tmp_path):
    """``mhpo-vl train`` (the real CLI, in its own process) stops at the missing file:
    exit 2, the same line as validate, no run directory, and the trainer never imported
    (so no model, processor or engine was built), within seconds of starting."""
    recipe = RECIPES / "qwen2_5_vl_7b" / "geometry3k_mhpo.yaml"
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE, "train", str(recipe), f"trainer.output_dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    result = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, res.stdout + res.stderr[-2000:]
    _, code, seconds, loaded = result[0].split(" ")
    assert code == "2" and loaded == "-", res.stderr[-2000:]
    assert float(seconds) < 60  # the recipe's checks only: no weights, no data read
    errors = [line for line in res.stderr.splitlines() if line.startswith("mhpo-vl: error:")]
    assert errors == [
        f"mhpo-vl: error: {recipe}: dataset not found: data/geometry3k/train.parquet "
        "(data.train.source); make it with: python data/prepare_geometry3k.py --out "
        "data/geometry3k (the recipe's Data: line; run it from the repository root), or "
        "fix the path"
    ]
    assert "Loading weights" not in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_recipe_without_a_data_line_gets_the_script_by_folder_name(tmp_path, monkeypatch):
    """A hand-written recipe (no header) pointing at where a prepare script writes:
    the script is found by the folder's name (``<dir>/math`` -> ``prepare_math.py``)."""
    tree = yaml.safe_load((RECIPES / "tiny" / "mhpo_text.yaml").read_text())
    tree["data"]["train"] = {"source": "data/math/train.parquet"}
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    monkeypatch.chdir(tmp_path)
    m = _error(recipe, f"trainer.output_dir={tmp_path / 'run'}")
    script = ROOT / "data" / "prepare_math.py"
    assert m["command"] == f"python {script} --out data/math"
    assert m["origin"] == "the prepare script that writes it"
    # elsewhere on disk, under a folder of the same name: that folder is the --out
    other = tmp_path / "scratch" / "geometry3k" / "test.parquet"
    m = _error(recipe, f"data.train.source={other}", f"trainer.output_dir={tmp_path / 'run'}")
    script = ROOT / "data" / "prepare_geometry3k.py"
    assert m["command"] == f"python {script} --out {other.parent}"
    # run from the repository root, the script is shown as the recipes' headers show it
    monkeypatch.chdir(ROOT)
    assert prepare_command(str(other)) == (
        f"python data/prepare_geometry3k.py --out {other.parent}",
        "the prepare script that writes it",
    )


def test_a_path_no_script_writes_gets_the_generic_pointer(tmp_path, monkeypatch):
    """The header's command is only offered for paths under its ``--out``; a path no
    script writes gets the registered names and a pointer to data/README.md."""
    monkeypatch.chdir(tmp_path)
    recipe = RECIPES / "qwen2_5_vl_7b" / "geometry3k_mhpo.yaml"
    mine = tmp_path / "mine" / "train.jsonl"
    with pytest.raises(UserError) as info:
        load_recipe(recipe, [f"data.train.source={mine}"])
    message = str(info.value)
    assert message.startswith(f"{recipe}: dataset not found: {mine} (data.train.source); ")
    assert "prepare_geometry3k" not in message
    assert "see data/README.md for the prepare scripts" in message
    assert all(name in message for name in DATASETS.names())


def test_hub_ids_and_registered_names_are_not_looked_up(tmp_path, monkeypatch):
    """Offline validation accepts a hub id without asking the hub; the documented way to
    check a real recipe's other settings before its data are prepared is to point both
    splits at the built-in synthetic data."""
    monkeypatch.chdir(tmp_path)
    recipe = RECIPES / "qwen2_5_vl_7b" / "geometry3k_mhpo.yaml"
    run = f"trainer.output_dir={tmp_path / 'run'}"
    hub = load_recipe(recipe, ["data.train.source=someone/some-dataset", "data.eval=null", run])
    assert hub.data.train.source == "someone/some-dataset"
    synthetic = ["data.train.source=synthetic_vision", "data.eval.source=synthetic_vision"]
    assert load_recipe(recipe, [*synthetic, run]).data.eval.source == "synthetic_vision"


def test_only_the_opening_comment_block_is_read(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# a recipe\n#\n# Data: python data/prepare_x.py --out data/x\nname: r\n")
    assert recipe_data_command(recipe) == "python data/prepare_x.py --out data/x"
    recipe.write_text("# a recipe\nname: r\n# Data: python data/prepare_x.py --out data/x\n")
    assert recipe_data_command(recipe) is None
    assert recipe_data_command(tmp_path / "gone.yaml") is None
    # a Data: line whose --out does not hold the path is not offered
    recipe.write_text("# Data: python data/prepare_x.py --out=data/x\nname: r\n")
    assert prepare_command("data/x/train.parquet", recipe)[0].endswith("--out=data/x")
    assert prepare_command("data/y/train.parquet", recipe) is None
    assert prepare_command("data/x/a/b.jsonl", recipe) == (
        "python data/prepare_x.py --out=data/x",
        "the recipe's Data: line",
    )
