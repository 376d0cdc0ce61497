"""Evaluate a model on benchmarks: prompts -> k samples each -> verdicts -> report.

:func:`evaluate` takes any generation callable ``generate_fn(prompts, k) -> completions``
(``P * k`` strings, prompt-major: row ``p * k + j`` is sample ``j`` of prompt ``p``), so
the scoring and reporting are independent of the engine. :func:`run_eval` wires it to
the real policy and rollout engine, imported only then.

Every results file records the decoding parameters, k, the prompt template and the
model path and revision.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.data.templates import build_prompts
from mhpo_vl.eval import metrics
from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark, Row
from mhpo_vl.rewards import judge, load_reward
from mhpo_vl.rewards.extract import clean
from mhpo_vl.rewards.verifiers import answer_span

GenerateFn = Callable[[list[dict[str, Any]], int], Sequence[str]]


def score_response(response: str, row: Mapping[str, Any], scorer: str) -> tuple[str | None, float]:
    """``(prediction, score)`` for one sample (:func:`score_sample` without the refusal)."""
    return score_sample(response, row, scorer)[:2]


def score_sample(
    response: str, row: Mapping[str, Any], scorer: str
) -> tuple[str | None, float, bool]:
    """``(prediction, score, refusal)`` for one sample: the normalized answer (for
    maj@k), the verdict of the benchmark's scorer, and whether the response refuses
    ("cannot be determined", "not enough information": scored 0, never mapped onto a
    choice; only the ``mathvista`` scorer tells refusals apart). ``mathvista`` reads
    responses as MathVista's official pipeline does
    (:func:`mhpo_vl.eval.mathvista.score_item`, official fallback, for
    leaderboard-comparable numbers); the others are the training rewards' verifiers,
    which never guess."""
    if scorer == "mathvista":
        from mhpo_vl.eval.mathvista import score_item

        scored = score_item({**row, "response": response}, use_extraction=False)
        return scored["prediction"], float(bool(scored["true_false"])), bool(scored["refusal"])
    prediction, score = _reward_verdict(response, row, scorer)
    return prediction, score, False


def _reward_verdict(response: str, row: Mapping[str, Any], scorer: str) -> tuple[str | None, float]:
    if scorer in ("accuracy", "math_answer", "multiple_choice"):
        verdict = judge(response, row if scorer != "math_answer" else {**row, "choices": None})
        ok = verdict.correct and (scorer != "multiple_choice" or bool(row.get("choices")))
        return verdict.prediction, float(ok)
    span = answer_span(response or "")
    return (clean(span) if span else None), float(load_reward(scorer)(response, row))


def _generate_all(
    generate_fn: GenerateFn, prompts: list[dict], k: int, batch_size: int | None
) -> list[str]:
    step = batch_size or len(prompts) or 1
    out: list[str] = []
    for start in range(0, len(prompts), step):
        chunk = prompts[start : start + step]
        got = list(generate_fn(chunk, k))
        if len(got) != len(chunk) * k:
            raise RuntimeError(
                f"generate_fn returned {len(got)} completions for {len(chunk)} prompts x k={k}"
            )
        out.extend(str(c) for c in got)
    return out


def evaluate(
    generate_fn: GenerateFn,
    benchmark: Benchmark | str,
    rows: Sequence[Row],
    k: int = 1,
    *,
    template: str | None = None,
    system: str | None = None,
    batch_size: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``k`` responses per row, score them, and summarize.

    Returns ``{"benchmark", "settings", "metrics", "breakdown", "problems"}``: metrics
    hold Avg@k, pass@1, pass@k and maj@k in percent (plus worst-case accuracy for
    benchmarks with variants, and for MathVista the share of samples that are refusals);
    ``problems`` has each row's responses, predictions and scores (and for MathVista
    which samples are refusals). ``settings`` (decoding, model) is recorded as given,
    with k and template.
    """
    bench = BENCHMARKS.get(benchmark) if isinstance(benchmark, str) else benchmark
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    template = template or bench.template
    responses = _generate_all(generate_fn, build_prompts(rows, template, system), k, batch_size)
    problems = []
    for p, row in enumerate(rows):
        samples = responses[p * k : (p + 1) * k]
        scored = [score_sample(r, row, bench.scorer) for r in samples]
        problem = {
            "id": row.get("id"),
            "answer": row.get("answer"),
            "responses": samples,
            "predictions": [s[0] for s in scored],
            "scores": [s[1] for s in scored],
        }
        if bench.scorer == "mathvista":
            problem["refusals"] = [s[2] for s in scored]
        problems.append(problem)
    return {
        "benchmark": bench.name,
        "settings": {
            **dict(settings or {}),
            "k": k,
            "template": template,
            "system": system,
            "scorer": bench.scorer,
            "hub_id": bench.hub_id,
            "splits": list(bench.splits),
            "n_problems": len(rows),
        },
        "metrics": summarize(problems, rows, k, bench.group_by),
        "breakdown": metrics.breakdown(
            rows, [sum(p["scores"]) / k for p in problems], bench.breakdown_keys
        ),
        "problems": problems,
    }


def summarize(
    problems: Sequence[Mapping[str, Any]], rows: Sequence[Row], k: int, group_by: str | None
) -> dict[str, float]:
    """Avg@k, pass@1, pass@k, maj@k in percent; worst-case over ``group_by`` groups; the
    percentage of samples that are refusals where the scorer tells them apart."""
    correct_PK = [p["scores"] for p in problems]
    answers_PK = [p["predictions"] for p in problems]
    out = {
        f"avg@{k}": 100 * metrics.avg_at_k(correct_PK),
        "pass@1": 100 * metrics.pass_at_k(correct_PK, 1),
        f"pass@{k}": 100 * metrics.pass_at_k(correct_PK, k),
        f"maj@{k}": 100 * metrics.maj_at_k(answers_PK, correct_PK),
    }
    if problems and all("refusals" in p for p in problems):
        flags = [flag for p in problems for flag in p["refusals"]]
        out["refusals"] = 100 * sum(flags) / len(flags)
    if group_by:
        groups: dict[Any, list[float]] = {}
        for row, scores in zip(rows, correct_PK, strict=True):
            groups.setdefault(row.get(group_by), []).append(sum(scores) / k)
        out["worst_case"] = 100 * sum(min(g) for g in groups.values()) / max(len(groups), 1)
        out["n_groups"] = len(groups)
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in out.items()}


def write_results(result: Mapping[str, Any], out_dir: str | Path, rows: Sequence[Row]) -> Path:
    """Write ``OUT/<benchmark>/results.json`` (settings, metrics, breakdown) and
    ``samples.jsonl`` (one problem per line); MathVista also gets the official
    ``output.json`` / ``scores.json`` layout from each problem's first sample."""
    bench_dir = Path(out_dir) / result["benchmark"]
    bench_dir.mkdir(parents=True, exist_ok=True)
    header = {key: result[key] for key in ("benchmark", "settings", "metrics", "breakdown")}
    header["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (bench_dir / "results.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    with (bench_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for problem in result["problems"]:
            f.write(json.dumps(problem, ensure_ascii=False) + "\n")
    if result["benchmark"].startswith("mathvista"):
        write_mathvista_layout(result, rows, bench_dir)
    return bench_dir / "results.json"


def write_mathvista_layout(result: Mapping[str, Any], rows: Sequence[Row], bench_dir: Path) -> None:
    """The official ``pid -> item`` output (first sample) and its scores file."""
    from mhpo_vl.eval.mathvista import refusal_counts, score_items, scores_layout, write_json

    items = {}
    for row, problem in zip(rows, result["problems"], strict=True):
        item = {key: value for key, value in row.items() if key not in ("image", "id")}
        items[str(row.get("pid") or row["id"])] = {**item, "response": problem["responses"][0]}
    scored, _ = score_items(items)
    write_json(bench_dir / "output.json", scored)
    scores = scores_layout(scored)
    scores["refusals"] = refusal_counts(scored)  # as ``eval score`` writes it
    write_json(bench_dir / "scores.json", scores)


def results_table(results: Sequence[Mapping[str, Any]], label: str, metric: str = "avg") -> str:
    """A one-row markdown table in the paper's layout from several benchmark results."""
    row = {}
    for res in results:
        key = next(m for m in res["metrics"] if m.startswith(metric + "@") or m == metric)
        row[res["benchmark"]] = res["metrics"][key]
    return metrics.markdown_table({label: row})


def run_eval(
    model: str,
    benchmarks: Sequence[str],
    out_dir: str | Path,
    *,
    k: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 2048,
    template: str | None = None,
    system: str | None = None,
    dtype: str = "bfloat16",
    revision: str | None = None,
    data: Mapping[str, str] | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Load the policy, sample and score every benchmark; write results and a table.

    Rows whose prompt is over ``max_prompt_tokens`` (default: what the model's context
    leaves after ``max_new_tokens``) are dropped at load, counted and named."""
    from mhpo_vl.eval.loaders import check_source, load_benchmark

    for name in benchmarks:  # unknown names and missing files fail before the model loads
        BENCHMARKS.get(name)
        check_source(name, (data or {}).get(name))
    generate_fn = _engine_generate_fn(model, dtype, temperature, top_p, max_new_tokens, seed)
    prompts = _prompt_limit(generate_fn, max_prompt_tokens, max_new_tokens, system)
    settings = {
        "model": {"path": model, "revision": revision, "dtype": dtype},
        "decoding": {
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "n": k,
            "seed": seed,
        },
        "limit": limit,
        "max_prompt_tokens": prompts.max_tokens if prompts else None,
    }
    results = []
    for name in benchmarks:
        source = (data or {}).get(name)
        fit = {"prompt_limit": prompts, "template": template} if prompts else {}
        rows = load_benchmark(name, source=source, limit=limit, **fit)
        result = evaluate(
            generate_fn,
            name,
            rows,
            k,
            template=template,
            system=system,
            batch_size=batch_size,
            settings={**settings, "data": source},
        )
        write_results(result, out_dir, rows)
        results.append(result)
    write_summary(results, {**settings, "k": k, "template": template}, out_dir)
    return results


def write_summary(
    results: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], out_dir: str | Path
) -> None:
    """``OUT/summary.json`` (settings, each benchmark's metrics) and ``OUT/table.md``."""
    summary = {
        "settings": dict(settings),
        "metrics": {r["benchmark"]: r["metrics"] for r in results},
    }
    out = Path(out_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    model = settings["model"]["path"]
    (out / "table.md").write_text(
        results_table(results, Path(model).name or model), encoding="utf-8"
    )


class _EngineGenerate:
    """The policy's hf engine as a :data:`GenerateFn`; ``policy`` is what it samples."""

    def __init__(self, policy: Any, temperature: float, top_p: float, max_new_tokens: int):
        from mhpo_vl.rollout import HFEngine, SamplingParams

        self.policy, self.engine = policy, HFEngine(policy)
        self.params = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self._sampling = SamplingParams

    def __call__(self, prompts: list[dict[str, Any]], k: int) -> list[str]:
        params = self._sampling(n=k, **self.params)
        return list(self.engine.generate(prompts, params).completions)


def _engine_generate_fn(
    model: str, dtype: str, temperature: float, top_p: float, max_new_tokens: int, seed: int
) -> GenerateFn:
    import torch

    from mhpo_vl.models import load_policy

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else None
    policy = load_policy(model, dtype=dtype, device=device)
    return _EngineGenerate(policy, temperature, top_p, max_new_tokens)


def _prompt_limit(
    generate_fn: GenerateFn, max_tokens: int | None, max_new_tokens: int, system: str | None
) -> Any:
    """The prompt limit of ``eval run`` for the policy ``generate_fn`` samples (None for
    a generate function without one): ``max_tokens``, else what the model's context
    leaves after ``max_new_tokens``."""
    from mhpo_vl.models.processors import PromptLimit, context_budget

    policy = getattr(generate_fn, "policy", None)
    if policy is None:
        return None
    key = "--max-prompt-tokens"
    if max_tokens is None:
        max_tokens, key = context_budget(policy.model.config, max_new_tokens, "--max-new-tokens")
        if max_tokens is None:
            return None
    return PromptLimit(policy.processor, policy.is_vision, max_tokens, "plain", system, key)
