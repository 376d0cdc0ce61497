"""A math checker that cannot run fails loudly; it never scores every answer 0.

The environments are real: a Python whose ``antlr4`` cannot be imported (a shadowing
package first on PYTHONPATH, as a wrong or missing antlr4 runtime behaves), both on the
main thread and in the worker process used off it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mhpo_vl.rewards import mathcheck, workers
from mhpo_vl.rewards.loading import score_rewards

ROOT = Path(__file__).resolve().parents[1]
BROKEN_ANTLR = "raise ImportError('simulated: antlr4 runtime built for another version')\n"


@pytest.fixture
def broken_env(tmp_path, monkeypatch):
    shadow = tmp_path / "shadow" / "antlr4"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(BROKEN_ANTLR)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow.parent), str(ROOT)]))
    return env


def test_known_pairs_are_equal_here():
    assert mathcheck.math_verify_problem() is None
    assert mathcheck.math_equal("\\frac{1}{2}", "0.5")


def test_off_main_thread_is_equal_too():
    found = []
    thread = threading.Thread(
        target=lambda: found.append(mathcheck.math_equal("\\frac{1}{2}", "0.5"))
    )
    thread.start()
    thread.join()
    assert found == [True]


def test_main_thread_with_a_broken_parser_raises_naming_the_cause(broken_env):
    code = (
        "from mhpo_vl.rewards.mathcheck import math_equal\n"
        "try:\n"
        "    math_equal('\\\\frac{1}{2}', '0.5')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "else:\n"
        "    print('no error')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=broken_env, timeout=120
    )
    assert res.stdout.startswith("VerifierUnavailable cannot import math_verify"), res.stdout
    assert "simulated: antlr4" in res.stdout and "antlr4-python3-runtime" in res.stdout


def test_worker_with_a_broken_parser_raises_off_main_thread(broken_env, monkeypatch):
    monkeypatch.setattr(os, "environ", broken_env)  # what the worker process inherits
    pool = workers.WorkerPool(size=1)
    monkeypatch.setattr(workers, "_POOL", pool)
    errors = []

    def check():
        try:
            mathcheck.math_equal("\\frac{1}{2}", "0.5")
        except mathcheck.VerifierUnavailable as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=check)
    thread.start()
    thread.join()
    pool.close()
    assert len(errors) == 1 and "simulated: antlr4" in errors[0]


def test_an_unavailable_checker_is_a_failed_reward_not_a_zero(monkeypatch):
    monkeypatch.setattr(mathcheck, "math_verify_problem", lambda: "cannot import math_verify: X")
    failures = {}
    total, parts = score_rewards(
        [("math_answer", 1.0)], ["\\boxed{\\frac{1}{2}}", "2/4"], [{"answer": "0.5"}] * 2, failures
    )
    assert total == [0.0, 0.0]
    count, first = failures["math_answer"]
    assert count == 2 and "VerifierUnavailable" in first and "cannot import" in first
