"""Regenerate the install locks from pyproject.toml's ranges, report what changed, and
(with ``--write``) replace them.

* ``locks/cpu.txt``: what ``bash scripts/setup.sh dev`` (and so CI) installs. Made by
  installing for real: a fresh venv in a temporary folder, torch's CPU build first (the
  version given by ``--torch``, by default the one the current lock pins), then
  ``pip install -e ".[dev]"`` from a copy of this repository (newest versions that
  pyproject.toml allows), then ``pip freeze``.
* ``locks/gpu.txt``: ``.[vllm,dev]`` for Linux x86_64, CPython 3.12, CUDA. Resolved, not
  installed: ``uv pip compile`` for that platform (wheels only), uv installed into a
  throwaway venv of its own. torch comes out as vLLM's pin, PyPI's CUDA build.
* ``locks/vllm-requires.json``: the pinned vLLM wheel's own requirements (its METADATA,
  read by ``pip install --dry-run --report``; the wheel is not downloaded), kept so that
  tests/test_locks.py can check the GPU lock against them offline.

Without ``--write`` nothing in locks/ changes: the script only reports. With ``--test``
the new CPU lock's venv runs the tests first (``quick``: the strict-device tier plus a
few files; ``full``: the whole suite, as CI does), and a failure keeps the old locks.

    python scripts/update_lock.py                      # report what a re-lock would change
    python scripts/update_lock.py --test --write       # re-lock, run the quick tier, write
    python scripts/update_lock.py --test full --write  # the same with the whole suite
    python scripts/update_lock.py --torch 2.14.0       # move the CPU lock's torch too
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
CPU_LOCK = LOCKS / "cpu.txt"
GPU_LOCK = LOCKS / "gpu.txt"
VLLM_REQUIRES = LOCKS / "vllm-requires.json"

CPU_EXTRAS = ("dev",)
GPU_EXTRAS = ("vllm", "dev")
GPU_PYTHON = "3.12"
# uv's name for the GPU target: glibc >= 2.31 (llguidance, a vLLM dependency, ships no
# older x86_64 wheel), so Ubuntu 20.04 / RHEL 9 and newer.
GPU_PLATFORM = "x86_64-manylinux_2_31"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
QUICK_FILES = (
    "tests/test_locks.py",
    "tests/test_models_tiny.py",
    "tests/test_processors.py",
    "tests/test_data_loading.py",
    "tests/test_rewards_verifiers.py",
    "tests/test_run_outputs.py",
)
COPY_IGNORE = (".venv", "runs", "outputs", "__pycache__", "*.egg-info", "build", "dist")
COPY_IGNORE += (".pytest_cache", ".ruff_cache", ".cache")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """``version`` without its local label: ``2.13.0+cpu`` -> ``2.13.0``."""
    return version.split("+", 1)[0]


def parse_lock(text: str, source: str = "lock") -> dict[str, str]:
    """The pins of a lock or ``pip freeze`` output, ``{canonical name: version}``.

    Blank lines and comments are skipped, and so are editable installs (``-e ...``), the
    project itself. Anything else that is not ``name==version`` raises ValueError naming
    the line: a lock holds exact pins only."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e ") or line.startswith("--editable"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;=]+)", line)
        if match is None:
            raise ValueError(f"{source} line {number}: {raw.strip()!r} is not name==version")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"{source} line {number}: {name} is pinned twice")
        pins[name] = match.group(2)
    return pins


def read_header(text: str) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a lock, keys lower-cased."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition(":")
        if sep and key.strip() and " " not in key.strip():
            header[key.strip().lower()] = value.strip()
    return header


@dataclass
class LockDiff:
    """What changed between two locks, each list sorted by name."""

    changed: list[tuple[str, str, str]] = field(default_factory=list)  # name, old, new
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed)


def diff_locks(old: dict[str, str], new: dict[str, str]) -> LockDiff:
    """Compare two ``parse_lock`` results."""
    diff = LockDiff()
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            diff.removed.append((name, old[name]))
        elif name not in old:
            diff.added.append((name, new[name]))
        elif old[name] != new[name]:
            diff.changed.append((name, old[name], new[name]))
    return diff


def format_diff(title: str, diff: LockDiff) -> str:
    """The report of one lock: a summary line, then ``package: old -> new``, ``+ added``
    and ``- removed`` lines."""
    counts = f"{len(diff.changed)} changed, {len(diff.added)} added, {len(diff.removed)} removed"
    lines = [f"{title}: {counts}" if diff else f"{title}: unchanged"]
    lines += [f"  {name}: {old} -> {new}" for name, old, new in diff.changed]
    lines += [f"  + {name} {version}" for name, version in diff.added]
    lines += [f"  - {name} {version}" for name, version in diff.removed]
    return "\n".join(lines)


def render_lock(header: list[str], pins: dict[str, str]) -> str:
    """A constraints file: the header as comments, then one ``name==version`` a line."""
    lines = [f"# {line}".rstrip() for line in header]
    lines += [f"{name}=={pins[name]}" for name in sorted(pins)]
    return "\n".join(lines) + "\n"


def pyproject() -> dict:
    """pyproject.toml's [project] table."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def vllm_version(project: dict) -> str:
    """The vLLM version the ``vllm`` extra pins (``vllm==X``)."""
    for requirement in project.get("optional-dependencies", {}).get("vllm", []):
        match = re.fullmatch(r"vllm\s*==\s*([^\s;]+)", requirement.strip())
        if match:
            return match.group(1)
    raise SystemExit("pyproject.toml: the vllm extra pins no vllm==X; the GPU lock follows it")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, echoing it; a failure stops the script with its output."""
    print("$", " ".join(str(part) for part in cmd), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(map(str, cmd))}")
    return done


def copy_repo(dest: Path) -> Path:
    """A copy of this repository to install and test from (the working tree is never
    built in, so the developer's .venv and egg-info stay as they are)."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
    return dest


def torch_requirement(version: str, index: str) -> list[str]:
    """pip arguments for torch's CPU build, as scripts/setup.sh installs it: on Linux the
    ``+cpu`` build from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build)."""
    spec = f"torch=={version}+cpu" if sys.platform.startswith("linux") else f"torch=={version}"
    return [spec, "--extra-index-url", index] if index else [spec]


def build_cpu_venv(work: Path, src: Path, python: str, torch: str, index: str) -> Path:
    """A fresh venv with torch's CPU build (alone from its index, as setup.sh does) and
    ``src[dev]`` with torch's dependencies at the newest allowed versions; returns its python."""
    venv = work / "venv"
    run([python, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([py, "-m", "pip", "install", "-q", "--no-deps", *torch_requirement(torch, index)])
    run([py, "-m", "pip", "install", "-q", "-e", f"{src}[{','.join(CPU_EXTRAS)}]"])
    return Path(py)


def freeze(py: Path) -> dict[str, str]:
    """The venv's packages, local labels dropped; left out: the editable project and pip
    (setup.sh upgrades it). setuptools stays: torch requires it at run time."""
    text = run([str(py), "-m", "pip", "freeze", "--all", "--exclude-editable"]).stdout
    pins = parse_lock(text, "pip freeze")
    return {name: public_version(v) for name, v in pins.items() if name != "pip"}


def cpu_header(py: Path, torch: str) -> list[str]:
    """The CPU lock's header: how, when and with which Python it was made."""
    info = run(
        [str(py), "-c", "import platform, pip; print(platform.python_version(), pip.__version__)"]
    )
    python, pip = info.stdout.split()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        'mhpo_vl CPU lock: every package `pip install -e ".[dev]"` resolved to, torch\'s CPU',
        "build included. scripts/setup.sh and .ci/run install with `-c locks/cpu.txt`.",
        "Made by scripts/update_lock.py: a fresh venv, torch's CPU build first",
        f"(torch=={torch}+cpu from PyTorch's CPU index on Linux), then pyproject.toml's ranges",
        "(newest allowed), then `pip freeze`. torch is pinned without its +cpu label: install",
        "the CPU build first, as scripts/setup.sh does, or pip may take PyPI's CUDA build.",
        f"made: {now}",
        f"python: {python}",
        f"platform: {platform.system()} {platform.machine()}",
        f"pip: {pip}",
        f"extras: {','.join(CPU_EXTRAS)}",
        "",
    ]


def install_uv(work: Path) -> tuple[Path, str]:
    """uv in a throwaway venv of its own; returns its path and version."""
    venv = work / "uv-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "uv"])
    uv = venv / "bin" / "uv"
    return uv, run([str(uv), "--version"]).stdout.split()[1]


def resolve_gpu(work: Path, src: Path) -> tuple[dict[str, str], str]:
    """``.[vllm,dev]`` resolved for the GPU target with uv (nothing installed)."""
    uv, uv_version = install_uv(work)
    out = work / "gpu.txt"
    cmd = [str(uv), "pip", "compile", str(src / "pyproject.toml")]
    for extra in GPU_EXTRAS:
        cmd += ["--extra", extra]
    cmd += ["--python-platform", GPU_PLATFORM, "--python-version", GPU_PYTHON]
    cmd += ["--only-binary", ":all:", "--no-header", "--no-annotate", "--native-tls"]
    run([*cmd, "-q", "-o", str(out)])
    return parse_lock(out.read_text(), "uv pip compile"), uv_version


def cuda_of(pins: dict[str, str]) -> str:
    """The CUDA runtime a GPU lock carries (from its nvidia-cuda-runtime pin)."""
    for name in ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12"):
        if name in pins:
            return pins[name]
    return "none (no nvidia-cuda-runtime pin)"


def gpu_header(pins: dict[str, str], uv_version: str, vllm: str) -> list[str]:
    """The GPU lock's header: how, when, for which target, and what was verified."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cuda = cuda_of(pins)
    extras = ",".join(GPU_EXTRAS)
    return [
        f"mhpo_vl GPU lock: `.[{extras}]` (vllm=={vllm}, mhpo_vl's core dependencies, the",
        f"dev extra) resolved together for Linux x86_64 (glibc >= 2.31), CPython {GPU_PYTHON}.",
        f"torch=={pins.get('torch', '?')} is vLLM {vllm}'s own pin, PyPI's Linux build, which is",
        f"the CUDA build: CUDA runtime {cuda} (an NVIDIA driver for that CUDA major version).",
        "Made by scripts/update_lock.py with `uv pip compile pyproject.toml "
        + " ".join(f"--extra {e}" for e in GPU_EXTRAS),
        f"--python-platform {GPU_PLATFORM} --python-version {GPU_PYTHON} --only-binary :all:`.",
        "Verified: resolution only (every pin has a wheel for the target). Nothing was",
        "installed or run on a GPU. Used by `bash scripts/setup.sh gpu`.",
        f"made: {now}",
        f"python: {GPU_PYTHON}",
        f"platform: {GPU_PLATFORM}",
        f"cuda: {cuda}",
        f"uv: {uv_version}",
        f"extras: {extras}",
        "",
    ]


def vllm_requires(work: Path, vllm: str) -> dict:
    """vLLM's wheel METADATA for the GPU target, read by pip's dry-run report (pip reads
    the index's metadata file; the 300+ MB wheel is not downloaded)."""
    report = work / "vllm-report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed"]
    cmd += ["--report", str(report), "--only-binary=:all:", "--implementation", "cp"]
    cmd += ["--python-version", GPU_PYTHON, "--target", str(work / "vllm-target"), "-q"]
    for minor in range(31, 16, -1):
        cmd += ["--platform", f"manylinux_2_{minor}_x86_64"]
    run([*cmd, f"vllm=={vllm}"])
    item = json.loads(report.read_text())["install"][0]
    meta = item["metadata"]
    return {
        "vllm": meta["version"],
        "wheel": item["download_info"]["url"].rsplit("/", 1)[-1],
        "requires_python": meta.get("requires_python"),
        "requires_dist": meta.get("requires_dist", []),
        "read_with": "pip install --dry-run --report (the wheel's METADATA)",
    }


def run_tests(py: Path, src: Path, tier: str, files: list[str]) -> bool:
    """The test suite (or its quick tier) in the new venv, from the repository copy."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    pytest = [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if tier == "full":
        runs = [["-m", "strict_device"], ["-m", "not strict_device"]]
    else:
        runs = [["-m", "strict_device"], ["-m", "not slow and not strict_device", *files]]
    for args in runs:
        print("$", " ".join([*pytest, *args]), flush=True)
        if subprocess.run([*pytest, *args], cwd=src, env=env).returncode != 0:
            return False
    return True


def current(path: Path) -> dict[str, str]:
    """The pins of a lock file, empty when there is none yet."""
    return parse_lock(path.read_text(), str(path)) if path.exists() else {}


def default_torch() -> str:
    """The CPU lock's torch pin: the CPU build stays put unless --torch moves it."""
    return current(CPU_LOCK).get("torch", "2.13.0")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--write", action="store_true", help="replace the files in locks/")
    parser.add_argument(
        "--test",
        nargs="?",
        const="quick",
        choices=("quick", "full"),
        help="run the tests in the new CPU venv first (default tier: quick); a failure keeps "
        "the old locks",
    )
    parser.add_argument(
        "--test-files",
        nargs="+",
        default=list(QUICK_FILES),
        metavar="FILE",
        help="the quick tier's files besides -m strict_device (default: %(default)s)",
    )
    parser.add_argument("--torch", default=None, help="torch version for the CPU lock")
    parser.add_argument(
        "--torch-index",
        default=os.environ.get("TORCH_INDEX_URL", TORCH_CPU_INDEX),
        help="where torch's CPU build comes from (env TORCH_INDEX_URL; '' for pip's "
        "configured sources only; default %(default)s)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter of the CPU venv")
    parser.add_argument("--skip-cpu", action="store_true", help="leave the CPU lock alone")
    parser.add_argument("--skip-gpu", action="store_true", help="leave the GPU lock alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def update_cpu(args: argparse.Namespace, work: Path, src: Path) -> tuple[str, bool]:
    """The new CPU lock's text, and whether its tests passed (True when not asked)."""
    torch = args.torch or default_torch()
    py = build_cpu_venv(work, src, args.python, torch, args.torch_index)
    pins = freeze(py)
    print(
        format_diff(f"CPU lock ({CPU_LOCK.relative_to(ROOT)})", diff_locks(current(CPU_LOCK), pins))
    )
    text = render_lock(cpu_header(py, torch), pins)
    (src / "locks").mkdir(exist_ok=True)
    (src / "locks" / CPU_LOCK.name).write_text(text)  # tests/test_locks.py reads the new one
    passed = run_tests(py, src, args.test, args.test_files) if args.test else True
    return text, passed


def update_gpu(work: Path, src: Path) -> tuple[str, str]:
    """The new GPU lock's text and vLLM's requirements (json text)."""
    vllm = vllm_version(pyproject())
    pins, uv_version = resolve_gpu(work, src)
    title = f"GPU lock ({GPU_LOCK.relative_to(ROOT)})"
    print(format_diff(title, diff_locks(current(GPU_LOCK), pins)))
    requires = json.dumps(vllm_requires(work, vllm), indent=1) + "\n"
    return render_lock(gpu_header(pins, uv_version, vllm), pins), requires


def main(argv: list[str] | None = None) -> int:
    """Re-lock, report, and write when asked and the tests (if asked) passed."""
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mhpo_vl_lock_"))
    outputs: dict[Path, str] = {}
    passed = True
    try:
        src = copy_repo(work / "src")
        if not args.skip_gpu:  # first: the quick tier reads the new GPU lock too
            outputs[GPU_LOCK], outputs[VLLM_REQUIRES] = update_gpu(work, src)
            for path, text in outputs.items():
                (src / "locks").mkdir(exist_ok=True)
                (src / "locks" / path.name).write_text(text)
        if not args.skip_cpu:
            outputs[CPU_LOCK], passed = update_cpu(args, work, src)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not passed:
        print("tests failed in the new venv: locks/ left as it was")
        return 1
    if not args.write:
        print("report only: pass --write to replace the files in locks/")
        return 0
    LOCKS.mkdir(exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
