"""The install locks (locks/) and scripts/update_lock.py's pure parts.

* parsing a lock and diffing two locks, on real lock text;
* locks/cpu.txt is what this venv holds: every installed package that pyproject.toml's
  dependencies (and the lock's extras) pull in, transitively, is pinned at its installed
  version, so a lock that drifted from what CI installed fails here;
* locks/gpu.txt pins the vLLM the ``vllm`` extra names and satisfies every requirement of
  that vLLM's wheel METADATA for the GPU target (torch included), as stored in
  locks/vllm-requires.json; both locks satisfy pyproject.toml's ranges. Offline.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _load_update_lock():
    spec = importlib.util.spec_from_file_location(
        "update_lock", ROOT / "scripts" / "update_lock.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("update_lock", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ul = _load_update_lock()

# The GPU lock's target, as pip's markers see it.
GPU_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}

SAMPLE = """\
# a header
# python: 3.11.7
# extras: dev

PyYAML==6.0.4
torch==2.13.0  # trailing comment
typing_extensions==4.16.0
-e /work/main
"""


def test_parse_lock_reads_pins_with_canonical_names():
    assert ul.parse_lock(SAMPLE) == {
        "pyyaml": "6.0.4",
        "torch": "2.13.0",
        "typing-extensions": "4.16.0",
    }
    assert ul.read_header(SAMPLE) == {"python": "3.11.7", "extras": "dev"}


@pytest.mark.parametrize(
    "line, fault",
    [
        ("torch>=2.6", "not name==version"),
        ("torch", "not name==version"),
        ("torch @ file:///x/torch.whl", "not name==version"),
        ("Torch==2.13.0\ntorch==2.14.0", "pinned twice"),
    ],
)
def test_parse_lock_refuses_what_is_not_an_exact_pin(line, fault):
    with pytest.raises(ValueError, match=fault) as info:
        ul.parse_lock("# header\n" + line + "\n", "locks/x.txt")
    assert "locks/x.txt line " in str(info.value)


def test_public_version_drops_the_local_label():
    assert ul.public_version("2.13.0+cpu") == "2.13.0"
    assert ul.public_version("1.0") == "1.0"


def test_diff_locks_and_its_report():
    old = {"torch": "2.13.0", "transformers": "5.25.0", "gone": "1.0", "same": "2"}
    new = {"torch": "2.13.0", "transformers": "5.26.1", "fresh": "0.3", "same": "2"}
    diff = ul.diff_locks(old, new)
    assert diff.changed == [("transformers", "5.25.0", "5.26.1")]
    assert diff.added == [("fresh", "0.3")]
    assert diff.removed == [("gone", "1.0")]
    assert ul.format_diff("CPU lock", diff).splitlines() == [
        "CPU lock: 1 changed, 1 added, 1 removed",
        "  transformers: 5.25.0 -> 5.26.1",
        "  + fresh 0.3",
        "  - gone 1.0",
    ]
    same = ul.diff_locks(old, dict(old))
    assert not same
    assert ul.format_diff("GPU lock", same) == "GPU lock: unchanged"


def test_render_lock_round_trips():
    pins = {"b-pkg": "2.0", "a-pkg": "1.0"}
    text = ul.render_lock(["made: today", "python: 3.11.7", ""], pins)
    assert text.splitlines()[:3] == ["# made: today", "# python: 3.11.7", "#"]
    assert text.splitlines()[3:] == ["a-pkg==1.0", "b-pkg==2.0"]
    assert ul.parse_lock(text) == pins
    assert ul.read_header(text)["python"] == "3.11.7"


def _lock(name: str) -> tuple[dict[str, str], dict[str, str]]:
    text = (ROOT / "locks" / name).read_text()
    return ul.parse_lock(text, f"locks/{name}"), ul.read_header(text)


def _requirements(extras: list[str]) -> list[Requirement]:
    project = ul.pyproject()
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project.get("optional-dependencies", {})[extra]
    return [Requirement(text) for text in texts]


def _installed_closure(requirements: list[Requirement]) -> tuple[dict[str, str], list[str]]:
    """Installed distributions that ``requirements`` pull in, transitively (markers and
    extras evaluated here): ``{canonical name: version}``, and requirements not installed."""
    found: dict[str, str] = {}
    missing: list[str] = []
    seen: set[tuple[str, frozenset]] = set()
    pending = [(req, frozenset({""})) for req in requirements]
    while pending:
        req, parent_extras = pending.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": extra}) for extra in parent_extras
        ):
            continue
        key = (ul.canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        found[key[0]] = dist.version
        extras = frozenset({"", *req.extras})
        pending += [(Requirement(text), extras) for text in dist.requires or []]
    return found, missing


def test_cpu_lock_pins_what_this_venv_installed():
    pins, header = _lock("cpu.txt")
    extras = [e for e in header.get("extras", "").split(",") if e]
    installed, missing = _installed_closure(_requirements(extras))
    assert not missing, f"pyproject's requirements not installed here: {missing}"
    assert "torch" in installed and "transformers" in installed
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"installed but not in locks/cpu.txt: {unpinned}; rerun update_lock"
    drifted = {
        name: (version, pins[name])
        for name, version in installed.items()
        if not SpecifierSet(f"=={pins[name]}").contains(Version(version), prereleases=True)
    }
    assert not drifted, f"installed (version, lock pin) differ: {drifted}"


def test_cpu_lock_header_says_how_when_and_with_which_python():
    pins, header = _lock("cpu.txt")
    for key in ("made", "python", "platform", "pip", "extras"):
        assert header.get(key), f"locks/cpu.txt header lacks '# {key}: ...'"
    assert Version(header["python"]) >= Version("3.11")
    assert "dev" in header["extras"].split(",")
    assert "torch" in pins and "+" not in pins["torch"]


def _satisfies(pins: dict[str, str], req: Requirement, env: dict[str, str] | None) -> str | None:
    """Why ``pins`` fail ``req`` (None when they satisfy it or its marker rules it out)."""
    if req.marker is not None and not req.marker.evaluate(env or {"extra": ""}):
        return None
    name = ul.canonical(req.name)
    if name not in pins:
        return f"{req} is not pinned"
    if not req.specifier.contains(Version(pins[name]), prereleases=True):
        return f"{req}: pinned {pins[name]}"
    return None


@pytest.mark.parametrize("lock, env", [("cpu.txt", None), ("gpu.txt", GPU_ENV)])
def test_locks_satisfy_pyproject_ranges(lock, env):
    pins, header = _lock(lock)
    extras = [e for e in header.get("extras", "").split(",") if e]
    faults = [_satisfies(pins, req, env) for req in _requirements(extras)]
    assert [f for f in faults if f] == []


def test_gpu_lock_pins_vllm_and_the_torch_its_metadata_requires():
    pins, header = _lock("gpu.txt")
    stored = json.loads((ROOT / "locks" / "vllm-requires.json").read_text())
    vllm = ul.vllm_version(ul.pyproject())
    assert pins["vllm"] == vllm == stored["vllm"]
    assert header["python"] == "3.12" and header["platform"].startswith("x86_64-manylinux")
    assert SpecifierSet(stored["requires_python"]).contains(header["python"])
    torch_reqs = [Requirement(t) for t in stored["requires_dist"] if Requirement(t).name == "torch"]
    assert torch_reqs, "vllm-requires.json names no torch requirement"
    faults = [_satisfies(pins, req, GPU_ENV) for req in torch_reqs]
    assert [f for f in faults if f] == []
    assert header["cuda"].split(".")[0].isdigit(), "the GPU lock carries no CUDA runtime"


def test_gpu_lock_satisfies_every_requirement_of_vllm():
    pins, _ = _lock("gpu.txt")
    stored = json.loads((ROOT / "locks" / "vllm-requires.json").read_text())
    faults = [_satisfies(pins, Requirement(t), GPU_ENV) for t in stored["requires_dist"]]
    assert [f for f in faults if f] == []
    # the check can fail: vLLM's torch pin against another torch
    assert _satisfies({**pins, "torch": "2.13.0"}, Requirement("torch==2.14.0"), GPU_ENV)
