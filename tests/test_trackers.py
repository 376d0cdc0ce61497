"""Experiment trackers (``trainer.report_to``) and the rollout sample records.

Each tracker runs for real and offline (W&B in offline mode, trackio's local SQLite
store, MLflow with a store in tmp_path, TensorBoard event files), and what it wrote is
read back: the recipe as the run config, a metric series, a sample row. One end-to-end
run of the real CLI checks the three trackers together with ``samples.jsonl`` and its
PNGs; another that W&B without a login stops the run before the model loads.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mhpo_vl.config import Recipe, build_recipe, check_values
from mhpo_vl.data.synthetic import SIZE
from mhpo_vl.errors import UserError
from mhpo_vl.tracking import RunLogger, sample_image_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"name": "tracked", "trainer": {"max_steps": 7, "report_to": ["x"]}}
REWARDS = {1: 0.25, 2: 0.5, 3: 0.75}  # reward/mean by step


@pytest.fixture(scope="module")
def tracker_env(tmp_path_factory):
    """Offline W&B and trackio stores under a temporary directory, for this module.
    trackio reads TRACKIO_DIR once, at import: it must not have been imported yet."""
    root = tmp_path_factory.mktemp("trackers")
    env = {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": root / "wb-config",
        "WANDB_CACHE_DIR": root / "wb-cache", "WANDB_DATA_DIR": root / "wb-data",
        "TRACKIO_DIR": root / "trackio",
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_DIR", raising=False)
        for key, value in env.items():
            mp.setenv(key, str(value))
        if "trackio" in sys.modules:
            from trackio.utils import TRACKIO_DIR

            if TRACKIO_DIR != root / "trackio":
                pytest.skip("trackio was imported before this module set TRACKIO_DIR")
        yield root


def _log_a_run(out: Path, names: list[str]) -> list[dict]:
    """Steps 1-3 of metrics, an eval at step 3, one group of samples with an image at
    step 2; the sample records as written."""
    logger = RunLogger(out, report_to=names, config=CONFIG, project="mhpo-test", run_name="r1")
    records = [
        {"group": 0, "id": "q7", "prompt": "How many sides?", "answer": "3",
         "response": f"<answer>{a}</answer>", "reward": r, "parts": {"accuracy": r},
         "advantage": adv, "image": None}
        for a, r, adv in (("3", 1.0, 0.7071), ("4", 0.0, -0.7071))
    ]  # fmt: skip
    for step, mean in REWARDS.items():
        logger.log(step, {"reward/mean": mean, "loss": 1.0 / step})
        if step == 2:
            logger.samples(step, records, [Image.new("RGB", (12, 10), (200, 30, 30))])
    logger.log(3, {"eval/accuracy": 0.5, "eval/accuracy/count": 0.25})
    logger.close()
    if "wandb" in names:  # its service writes the run's log out at exit, or here
        import wandb

        wandb.teardown()
    return records


# ---------------------------------------------------------------- recipe keys


def test_unknown_tracker_is_a_user_error_naming_the_key_and_the_valid_names():
    recipe = build_recipe({"trainer": {"report_to": ["tensorboard", "comet"]}})
    with pytest.raises(UserError) as err:
        check_values(recipe)
    assert str(err.value) == (
        "trainer.report_to[1]: unknown 'comet'; valid: tensorboard, wandb, trackio, mlflow"
    )
    check_values(build_recipe({"trainer": {"report_to": []}}))  # none at all is fine
    assert Recipe().trainer.report_to == ["tensorboard"] and Recipe().trainer.log_samples == 1


def test_report_to_parses_as_a_list_override_and_tensorboard_is_a_deprecated_alias(caplog):
    recipe = build_recipe({}, ["trainer.report_to=[wandb, trackio]"])
    assert recipe.trainer.report_to == ["wandb", "trackio"]
    with caplog.at_level(logging.WARNING, logger="mhpo_vl"):
        off = build_recipe({}, ["trainer.tensorboard=false"])
        on = build_recipe({}, ["trainer.report_to=[wandb]", "trainer.tensorboard=true"])
    assert off.trainer.report_to == [] and off.trainer.tensorboard is None
    assert on.trainer.report_to == ["wandb", "tensorboard"]
    assert "trainer.tensorboard is deprecated" in caplog.text


def test_changing_trackers_does_not_block_a_resume():
    from mhpo_vl.config import recipe_to_dict
    from mhpo_vl.training.rundir import compare_recipes

    a = recipe_to_dict(build_recipe({}))
    b = recipe_to_dict(
        build_recipe({}, ["trainer.report_to=[wandb]", "trainer.run_name=x",
                          "trainer.tracker_project=p"])
    )  # fmt: skip
    altering, harmless = compare_recipes(a, b)
    assert altering == [] and {k for k, _, _ in harmless} == {
        "trainer.report_to", "trainer.run_name", "trainer.tracker_project"
    }  # fmt: skip


# ---------------------------------------------------------------- each tracker, read back


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` transaction log. wandb 0.31 ships no Python
    reader for it (``wandb.sdk.internal.datastore`` is gone), so this follows its
    documented LevelDB-log layout: a 7-byte header, then 32 KiB blocks of chunks
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_gets_the_config_every_metric_and_the_samples_table(tracker_env, tmp_path):
    pytest.importorskip("wandb")
    _log_a_run(tmp_path, ["wandb"])
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    config, history = {}, {}
    for rec in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            history[rec.history.step.num] = items
    assert rec.WhichOneof("record_type") == "exit" and rec.exit.exit_code == 0
    assert config["trainer"]["max_steps"] == 7 and config["name"] == "tracked"
    assert {s: json.loads(h["reward/mean"]) for s, h in history.items()} == REWARDS
    assert json.loads(history[3]["eval/accuracy"]) == 0.5 and "eval/table/nrows" in history[3]
    table = json.loads((run_dir / "files" / json.loads(history[2]["samples/path"])).read_text())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["prompt"] == "How many sides?" and row["response"] == "<answer>3</answer>"
    assert row["reward"] == 1.0 and row["reward/accuracy"] == 1.0 and row["advantage"] == 0.7071


def test_trackio_local_store_gets_the_config_every_metric_and_the_samples_table(
    tracker_env, tmp_path
):
    pytest.importorskip("trackio")
    _log_a_run(tmp_path, ["trackio"])
    db = sqlite3.connect(tracker_env / "trackio" / "mhpo-test.db")
    (config,) = db.execute("select config from configs where run_name = 'r1'").fetchone()
    assert json.loads(config)["trainer"]["max_steps"] == 7
    rows = db.execute("select step, metrics from metrics where run_name = 'r1' order by id")
    logged = [(step, json.loads(m)) for step, m in rows]
    assert {s: m["reward/mean"] for s, m in logged if "reward/mean" in m} == REWARDS
    (samples,) = [m["samples"] for s, m in logged if "samples" in m and s == 2]
    first = samples["_value"][0]
    assert first["prompt"] == "How many sides?" and first["response"] == "<answer>3</answer>"
    assert first["reward"] == 1.0 and first["image"]["_type"] == "trackio.image"
    media = tracker_env / "trackio" / "media" / first["image"]["file_path"]
    assert Image.open(media).size == (12, 10)
    (evals,) = [m["eval/table"] for s, m in logged if "eval/table" in m]
    assert {(r["suite"], r["task"]): r["accuracy"] for r in evals["_value"]} == {
        ("heldout", "all"): 0.5, ("heldout", "count"): 0.25
    }  # fmt: skip


def test_mlflow_store_gets_params_metric_history_and_the_samples_table(
    tracker_env, tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (the mlflow extra)")
    # a SQLite store (MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE),
    # whose new experiments keep their artifacts in ./mlruns: here, tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    _log_a_run(tmp_path, ["mlflow"])
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mhpo-test").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params["trainer.max_steps"] == "7"
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert {m.step: m.value for m in history} == REWARDS
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "samples/step-000002.json")).read_text()
    )
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["prompt"] == "How many sides?" and row["reward"] == 1.0 and row["step"] == 2


def test_tensorboard_gets_scalars_the_samples_text_and_each_groups_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_a_run(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("reward/mean")} == REWARDS
    (image,) = events.Images("samples/group-0")
    assert image.step == 2 and (image.width, image.height) == (12, 10)
    (text,) = events.Tensors("samples/text_summary")
    assert "How many sides?" in text.tensor_proto.string_val[0].decode()


# ---------------------------------------------------------------- files, failures


def test_samples_write_one_png_per_group_and_a_resume_drops_later_ones(tmp_path):
    logger = RunLogger(tmp_path, report_to=[])
    for step in (1, 2, 3):
        recs = [{"group": g, "id": str(g), "image": None} for g in (0, 0, 1, 1, 2)]
        logger.samples(step, recs, [Image.new("RGB", (9, 5)), None, Image.new("RGB", (4, 4))])
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines[:5]] == [
        "samples/step-000001/group-0.png", "samples/step-000001/group-0.png", None, None,
        "samples/step-000001/group-2.png",
    ]  # fmt: skip
    assert Image.open(tmp_path / sample_image_path(3, 2)).size == (4, 4)
    logger.truncate_after(1)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000001"]
    assert {x["step"] for x in map(json.loads, (tmp_path / "samples.jsonl").open())} == {1}


def test_a_tracker_failing_mid_run_warns_then_is_switched_off_and_jsonl_stays_complete(
    tracker_env, tmp_path, caplog
):
    pytest.importorskip("wandb")
    logger = RunLogger(tmp_path, report_to=["wandb"], config=CONFIG, project="p", run_name="r")
    logger.trackers[0].impl.run.finish()  # the library's own error from here on
    with caplog.at_level(logging.WARNING, logger="mhpo_vl"):
        for step in range(1, 5):
            logger.log(step, {"reward/mean": 0.1})
    logger.close()
    said = [r.getMessage() for r in caplog.records if "trainer.report_to: wandb" in r.getMessage()]
    assert len(said) == 3 and "switched off after 3 failures" in said[-1]
    assert not logger.trackers
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").open()] == [1, 2, 3, 4]


def test_a_missing_tracker_package_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what find_spec reports as missing
    with pytest.raises(UserError) as err:
        RunLogger(tmp_path, report_to=["mlflow"])
    assert str(err.value) == (
        'trainer.report_to: mlflow is not installed; install it with pip install -e ".[mlflow]", '
        "or remove mlflow from trainer.report_to"
    )


def _cli(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mhpo_vl", "train", "recipes/tiny/mhpo.yaml", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def test_wandb_without_a_login_stops_the_run_before_the_model_loads(tmp_path):
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(
        HOME=str(tmp_path), WANDB_MODE="online", WANDB_CONFIG_DIR=str(tmp_path / "wb"),
        WANDB_BASE_URL="http://127.0.0.1:9",  # nothing listens: never the network
    )  # fmt: skip
    out = tmp_path / "run"
    res = _cli([f"trainer.output_dir={out}", "trainer.report_to=[wandb]"], env, timeout=180)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "trainer.report_to: wandb could not start (not logged in to http://127.0.0.1:9); run "
        "'wandb login', set WANDB_MODE=offline to log locally, or remove wandb from "
        "trainer.report_to"
    ), last
    assert not (out / "metrics.jsonl").exists() and "training on" not in res.stderr


@pytest.mark.slow
def test_cli_run_reports_to_three_trackers_and_writes_the_samples_format(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(
        WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wb"),
        WANDB_CACHE_DIR=str(tmp_path / "wb"), WANDB_DATA_DIR=str(tmp_path / "wb"),
        TRACKIO_DIR=str(tmp_path / "trackio"),
    )  # fmt: skip
    out = tmp_path / "run"
    args = [
        f"trainer.output_dir={out}", "trainer.max_steps=2", "eval.size=8",
        "trainer.report_to=[tensorboard,wandb,trackio]", "trainer.prompts_per_step=4",
        "rollout.group_size=4", "trainer.minibatches=1", "trainer.log_samples=2",
        "trainer.progress_bar=false",
    ]  # fmt: skip
    res = _cli(args, env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    # samples.jsonl: 2 groups x G=4 responses per step, in exactly the viewer's format
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 4
    keys = ["step", "group", "id", "prompt", "answer", "response", "reward", "parts",
            "advantage", "image"]  # fmt: skip
    # a multiple-choice row's options follow, for reading a letter answer
    assert all(list(x) in (keys, [*keys, "choices"]) for x in lines)
    assert all(len(x["choices"]) >= 2 for x in lines if "choices" in x)
    for step in (1, 2):
        for g in (0, 1):
            rows = [x for x in lines if x["step"] == step and x["group"] == g]
            assert len(rows) == 4 and len({x["id"] for x in rows}) == 1
            assert {x["image"] for x in rows} == {f"samples/step-{step:06d}/group-{g}.png"}
            png = Image.open(out / rows[0]["image"])
            assert png.format == "PNG" and png.size == (SIZE, SIZE)  # the synthetic image
            rewards = torch.tensor([x["reward"] for x in rows])
            expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
            assert torch.allclose(torch.tensor([x["advantage"] for x in rows]), expected, atol=1e-5)
            assert all(x["reward"] == sum(x["parts"].values()) for x in rows)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    series = {m["step"]: m["reward/mean"] for m in metrics if "reward/mean" in m}
    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("reward/mean")} == pytest.approx(series)
    assert [i.step for i in events.Images("samples/group-1")] == [1, 2]
    # W&B (offline, under the run directory)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    history, config, paths = {}, {}, {}  # paths: the samples table's file at each step
    for rec in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            if "reward/mean" in items:
                history[rec.history.step.num] = json.loads(items["reward/mean"])
            if "samples/path" in items:
                paths[rec.history.step.num] = json.loads(items["samples/path"])
        elif rec.WhichOneof("record_type") == "run":
            config = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
    assert history == pytest.approx(series) and config["name"] == "tiny_mhpo"
    assert config["trainer"]["report_to"] == ["tensorboard", "wandb", "trackio"]
    table = json.loads((run_dir / "files" / paths[1]).read_text())
    first = dict(zip(table["columns"], table["data"][0], strict=True))
    assert first["response"] == lines[0]["response"] and first["reward"] == lines[0]["reward"]
    # trackio (project mhpo_vl, run named after the recipe)
    db = sqlite3.connect(tmp_path / "trackio" / "mhpo_vl.db")
    (cfg,) = db.execute("select config from configs where run_name = 'tiny_mhpo'").fetchone()
    assert json.loads(cfg)["trainer"]["max_steps"] == 2
    logged = [(s, json.loads(m)) for s, m in db.execute("select step, metrics from metrics")]
    assert {s: m["reward/mean"] for s, m in logged if "reward/mean" in m} == pytest.approx(series)
    (samples,) = [m["samples"]["_value"] for s, m in logged if "samples" in m and s == 1]
    assert samples[0]["prompt"] == lines[0]["prompt"] and len(samples) == 8
