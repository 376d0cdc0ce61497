"""What a user reward may return: floats, and the numbers 0-d tensors and numpy scalars
hold; anything else (a tensor of shape (3,) or (1,), an array) is refused with one line
naming the reward and the returned type. The worker process is never restarted for a
return value: a tensor crossing the pipe used to break the connection (``AuthenticationError:
digest sent was rejected``) and cost a worker restart, about 3 s, per call."""

from __future__ import annotations

import time

import pytest

from mhpo_vl.rewards import loading, workers
from mhpo_vl.rewards.loading import score_rewards

NUMBERS = [
    ("torch.tensor(0.5)", 0.5),
    ("torch.tensor(0.5, requires_grad=True) * 1", 0.5),
    ("torch.tensor(2, dtype=torch.int64)", 2.0),
    ("torch.tensor(True)", 1.0),
    ("numpy.float32(0.25)", 0.25),
    ("numpy.int64(3)", 3.0),
    ("numpy.bool_(True)", 1.0),
    ("numpy.array(0.75)", 0.75),
]
REFUSED = [
    ("torch.zeros(3)", "returned torch.Tensor of shape (3,)"),
    ("torch.tensor([0.5])", "returned torch.Tensor of shape (1,)"),
    ("torch.tensor([[0.5]], requires_grad=True)", "returned torch.Tensor of shape (1, 1)"),
    ("numpy.zeros(2)", "returned numpy.ndarray of shape (2,)"),
    ("torch.tensor(float('nan'))", "returned nan"),
    ("object()", "returned builtins.object"),
]


def _reward(tmp_path, body: str, name: str = "my_reward") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(f"import numpy, torch\n\ndef score(response, row):\n    return {body}\n")
    return f"{path}:score"


@pytest.fixture(scope="module")
def pool():
    """One fresh one-worker pool as the process-wide pool for the module (its worker
    imports torch once), closed after it."""
    fresh = workers.WorkerPool(size=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workers, "_POOL", fresh)
        yield fresh
    fresh.close()


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(loading, "_LOADED", {})
    monkeypatch.setattr(loading, "_STATS", {})


def _pids(pool: workers.WorkerPool) -> list[int]:
    return [w.proc.pid for w in list(pool._idle.queue) if w is not None]


@pytest.mark.parametrize(("body", "score"), NUMBERS, ids=[b for b, _ in NUMBERS])
def test_scalars_are_scores_in_the_worker_and_in_process(tmp_path, pool, body, score):
    spec = _reward(tmp_path, body)
    errors = pool.stats["errors"]
    for isolate in (True, False):
        fn = loading.load_reward(spec, isolate=isolate)
        assert fn.judge("a", {"id": "r"}) == (score, "")
    assert pool.stats["errors"] == errors and pool.stats["timeouts"] == 0


@pytest.mark.parametrize(("body", "why"), REFUSED, ids=[b for b, _ in REFUSED])
def test_anything_else_is_refused_in_one_line(tmp_path, pool, body, why):
    spec = _reward(tmp_path, body)
    for isolate in (True, False):
        score, said = loading.load_reward(spec, isolate=isolate).judge("a", {"id": "r"})
        assert score is None and said.startswith(why) and "\n" not in said


def test_the_worker_is_never_restarted_for_a_return_value(tmp_path, pool):
    fn = loading.load_reward(_reward(tmp_path, "torch.ones(3, requires_grad=True)"))
    assert fn("warm", {}) == 0.0
    first = _pids(pool)
    start = time.monotonic()
    for _ in range(20):
        assert fn("a", {"id": "r"}) == 0.0
    assert time.monotonic() - start < 2.0  # a restart costs seconds each
    assert _pids(pool) == first and len(first) == 1


def test_step_scoring_converts_and_refuses_with_the_reward_named(tmp_path, caplog):
    failures: dict = {}
    good = _reward(tmp_path, "torch.tensor(0.5)", name="good")
    bad = _reward(tmp_path, "torch.zeros(3)")
    total, parts = score_rewards(
        [(good, 1.0), (bad, 1.0)],
        ["a", "b"],
        [{"id": "q1"}, {"id": "q2"}],
        failures,
        step_timeout=60.0,
        workers=1,
    )
    workers.close_step_pools()
    assert parts["good.py:score"] == [0.5, 0.5] and parts["my_reward.py:score"] == [0.0, 0.0]
    count, first = failures["my_reward.py:score"]
    assert count == 2 and first.startswith("row 'q1': returned torch.Tensor of shape (3,)")
    assert "good.py:score" not in failures
    warned = [r.getMessage() for r in caplog.records if "my_reward.py:score" in r.getMessage()]
    assert warned and "returned torch.Tensor of shape (3,)" in warned[0]
