"""``mhpo-vl samples RUN``: the logged rollouts of a step, to catch reward hacking.

Reads ``RUN/samples.jsonl`` (one response a line, written by the trainer every step)::

    {"step": 12, "group": 0, "id": "...", "prompt": "...", "answer": "...",
     "response": "...", "reward": 1.0, "parts": {"accuracy": 1.0}, "advantage": 0.93,
     "image": "samples/step-000012/group-0.png"}

``image`` is a path relative to ``RUN`` (one PNG per group, shared by its responses) or
null for a text prompt. Lines of older runs have no ``group``, ``advantage`` or
``image``: their responses are grouped by ``id`` within a step and show "—" for the
advantage.

Two views of one step (the latest by default, ``--step N``, or ``--step all``):

- :func:`render_text`, the terminal: each group's prompt and expected answer, then its
  responses by reward, highest first, one line each (reward, reward parts, advantage).
- :func:`render_html`, one self-contained page (``--html OUT``): no server and nothing
  fetched, images embedded as ``data:`` URIs, everything from the log HTML-escaped.

Malformed lines are skipped, counted and named (``file:line``); a missing image file is
a note on its card, never an error.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError, missing_file

SAMPLES_FILE = "samples.jsonl"
DASH = "—"
# how many malformed lines a note names before "..."
NAMED_BAD_LINES = 5
# how the trainer writes the numbers JSON has no literal for
_NON_FINITE = ("nan", "inf", "infinity")
# the image kinds a page embeds, by their first bytes
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


# ---------------------------------------------------------------------------- reading


@dataclass
class Sample:
    """One logged response; ``advantage`` and ``image`` are None where not logged."""

    step: int
    group: int | None
    id: str
    prompt: str
    answer: str
    response: str
    reward: float
    parts: dict[str, float | None]
    advantage: float | None
    image: str | None
    choices: list[str] | None = None  # a multiple-choice row's options, where logged


@dataclass
class Group:
    """The logged responses to one prompt of one step, highest reward first."""

    index: int  # position among the step's groups, 0-based (the logged ``group``)
    id: str
    prompt: str
    answer: str
    image: str | None
    choices: list[str] | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def part_names(self) -> list[str]:
        """The reward parts of the group's responses, in the order first seen."""
        names: dict[str, None] = {}
        for s in self.samples:
            names.update(dict.fromkeys(s.parts))
        return list(names)

    @property
    def mean_reward(self) -> float:
        return sum(s.reward for s in self.samples) / max(len(self.samples), 1)


@dataclass
class SampleLog:
    """What :func:`read_samples` found: every logged step, the samples of the wanted
    ones, and the malformed lines (``(line number, reason)``)."""

    path: Path
    steps: list[int]
    samples: dict[int, list[Sample]]
    bad_lines: list[tuple[int, str]]

    def bad_note(self) -> str | None:
        """One line counting and naming the malformed lines, or None when there are none."""
        if not self.bad_lines:
            return None
        named = ", ".join(f"{self.path}:{n} ({why})" for n, why in self.bad_lines[:NAMED_BAD_LINES])
        more = len(self.bad_lines) - NAMED_BAD_LINES
        tail = f", ... and {more} more" if more > 0 else ""
        s = "s" if len(self.bad_lines) != 1 else ""
        return f"skipped {len(self.bad_lines)} malformed line{s}: {named}{tail}"

    def steps_summary(self) -> str:
        """``steps 1..350, 350 logged``: which steps the log holds."""
        if not self.steps:
            return "no steps"
        if len(self.steps) == 1:
            return f"step {self.steps[0]} only"
        return f"steps {self.steps[0]}..{self.steps[-1]}, {len(self.steps)} logged"


def _number(value: Any, key: str, optional: bool = False) -> float | None:
    """A logged number as a float: a JSON number, or the strings the trainer writes for
    the values JSON has no literal for ("nan", "inf", "-inf"); None where ``optional``
    and null. ValueError naming ``key`` otherwise."""
    if value is None and optional:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in _NON_FINITE:
        return float(value)
    raise ValueError(f"{key!r} is {value!r}, not a number")


def _text(rec: dict[str, Any], key: str) -> str:
    """``rec[key]`` as text: strings as they are, numbers (an answer of 4) as written."""
    value = rec.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _sample(rec: Any) -> Sample:
    """One parsed line as a :class:`Sample`; ValueError naming what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    for key in ("step", "response", "reward"):
        if key not in rec:
            raise ValueError(f"no {key!r}")
    if not isinstance(rec["step"], int) or isinstance(rec["step"], bool):
        raise ValueError(f"'step' is {rec['step']!r}, not an integer")
    if not isinstance(rec["response"], str):
        raise ValueError("'response' is not a string")
    reward = _number(rec["reward"], "reward")
    parts = rec.get("parts") or {}
    if not isinstance(parts, dict):
        raise ValueError("'parts' is not an object")
    parts = {str(k): _number(v, f"parts.{k}", optional=True) for k, v in parts.items()}
    group = rec.get("group")
    if group is not None and (not isinstance(group, int) or isinstance(group, bool)):
        raise ValueError(f"'group' is {group!r}, not an integer")
    advantage = _number(rec.get("advantage"), "advantage", optional=True)
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError("'image' is not a string or null")
    choices = rec.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ValueError("'choices' is not a list or null")
    return Sample(
        step=rec["step"],
        group=group,
        id=_text(rec, "id"),
        prompt=_text(rec, "prompt"),
        answer=_text(rec, "answer"),
        response=rec["response"],
        reward=reward,
        parts=parts,
        advantage=advantage,
        image=image,
        choices=None if choices is None else [_text({"c": c}, "c") for c in choices],
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def read_samples(run_dir: str | Path, want: int | str | None = None) -> SampleLog:
    """Parse ``RUN/samples.jsonl``, keeping the samples of step ``want`` (an int),
    of every step (``"all"``) or of the latest step (None). Reads line by line and
    holds only what it keeps; malformed lines are collected, never raised."""
    run = Path(run_dir)
    if not run.is_dir():
        fix = "give a run directory (a recipe's trainer.output_dir)"
        raise missing_file("run directory", run, "the RUN argument", fix)
    path = run / SAMPLES_FILE
    if not path.is_file():
        fix = "the run logged no rollouts (trainer.log_samples is 0, or no step has finished)"
        raise missing_file(SAMPLES_FILE, path, "in the RUN directory", fix)
    steps: set[int] = set()
    kept: dict[int, list[Sample]] = {}
    bad: list[tuple[int, str]] = []
    for number, line in _lines(path):
        try:
            sample = _sample(json.loads(line))
        except ValueError as exc:  # json.JSONDecodeError is one
            reason = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
            bad.append((number, reason))
            continue
        steps.add(sample.step)
        if want is None:  # the latest step so far only
            latest = max(kept, default=None)
            if latest is None or sample.step > latest:
                kept = {sample.step: [sample]}
            elif sample.step == latest:
                kept[latest].append(sample)
        elif want == "all" or want == sample.step:
            kept.setdefault(sample.step, []).append(sample)
    return SampleLog(path=path, steps=sorted(steps), samples=kept, bad_lines=bad)


def group_samples(samples: list[Sample]) -> list[Group]:
    """One step's samples as groups: by the logged ``group`` index, else (older runs)
    by ``id`` in the order first seen; each group's responses highest reward first
    (ties keep the logged order)."""
    groups: dict[tuple[str, object], Group] = {}
    for s in samples:
        key: tuple[str, object] = ("group", s.group) if s.group is not None else ("id", s.id)
        if key not in groups:
            index = s.group if s.group is not None else len(groups)
            groups[key] = Group(index, s.id, s.prompt, s.answer, s.image, s.choices)
        g = groups[key]
        g.samples.append(s)
        if g.image is None and s.image is not None:
            g.image = s.image
    ordered = sorted(groups.values(), key=lambda g: g.index)
    for g in ordered:
        g.samples.sort(key=lambda s: -s.reward if not math.isnan(s.reward) else math.inf)
    return ordered


def parse_step(value: str | None) -> int | str | None:
    """The ``--step`` argument: None (the latest), ``"all"``, or a step number."""
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"--step {value!r} is not a step number; give e.g. --step 12, or --step all"
        ) from None


def select_steps(log: SampleLog, want: int | str | None) -> list[int]:
    """The steps to show; a UserError naming the logged steps when ``want`` is not one."""
    if not log.steps:
        note = log.bad_note()
        detail = f"; {note}" if note else ""
        raise UserError(f"no rollouts logged in {log.path}{detail}")
    if want == "all":
        return list(log.steps)
    if want is None:
        return [log.steps[-1]]
    if want not in log.steps:
        raise UserError(f"step {want} was not logged in {log.path}; it holds {log.steps_summary()}")
    return [int(want)]


def run_info(run_dir: str | Path) -> dict[str, str]:
    """The recipe's ``name`` and loss from ``RUN/config.yaml``, where it is readable."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    info = {}
    if isinstance(cfg.get("name"), str):
        info["name"] = cfg["name"]
    algorithm = cfg.get("algorithm")
    loss = algorithm.get("loss") if isinstance(algorithm, dict) else None
    if isinstance(loss, dict) and isinstance(loss.get("name"), str):
        info["loss"] = loss["name"]
    if isinstance(algorithm, dict) and isinstance(algorithm.get("advantage"), str):
        info["advantage"] = algorithm["advantage"]
    return info


# ---------------------------------------------------------------------------- terminal


def _signed(value: float | None) -> str:
    if value is None:
        return DASH
    return "nan" if math.isnan(value) else f"{value:+.3f}"


def _plain(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def _one_line(text: str, width: int) -> str:
    """``text`` with its whitespace collapsed, cut to ``width`` characters with "…"."""
    flat = re.sub(r"\s+", " ", text).strip()
    if width > 0 and len(flat) > width:
        return flat[: max(width - 1, 0)] + "…"
    return flat


def _counts(groups: list[Group]) -> str:
    """``4 groups, 32 responses``."""
    n = sum(len(g.samples) for g in groups)
    return f"{len(groups)} group{'s' * (len(groups) != 1)}, {n} response{'s' * (n != 1)}"


def _indented(text: str, indent: str) -> str:
    lines = text.splitlines() or [""]
    return ("\n" + indent).join(lines)


def _fields(g: Group) -> list[tuple[str, str]]:
    """The group's prompt, its choices (where logged: ``A. red  B. blue``), its answer."""
    fields = [("prompt", g.prompt)]
    if g.choices:
        marks = [
            chr(ord("A") + i) if len(g.choices) <= 26 else str(i + 1) for i in range(len(g.choices))
        ]
        fields.append(
            ("choices", "  ".join(f"{m}. {c}" for m, c in zip(marks, g.choices, strict=True)))
        )
    fields.append(("answer", g.answer))
    return fields


def _title(run_dir: str | Path, info: dict[str, str]) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in info.items() if k != "name")
    name = info.get("name")
    head = f"{name} ({run_dir})" if name else str(run_dir)
    return f"{head}{'  ' + extra if extra else ''}"


def _text_group(g: Group, width: int, full: bool) -> list[str]:
    image = f"  image {g.image}" if g.image else ""
    out = [
        f"group {g.index}  {g.id}{image}  G={len(g.samples)}  mean reward {g.mean_reward:+.3f}",
    ]
    for label, text in _fields(g):
        shown = _indented(text, " " * 11) if full else _one_line(text, max(width - 11, 20))
        out.append(f"  {label:<7}  {shown}")
    names = g.part_names
    cols = [max(len(n), 6) for n in names]
    header = ["  reward", *(n.rjust(c) for n, c in zip(names, cols, strict=True)), "advantage"]
    out.append("  " + "  ".join(header) + "  response")
    for s in g.samples:
        cells = [
            _signed(s.reward).rjust(8),
            *(_plain(s.parts.get(n)).rjust(c) for n, c in zip(names, cols, strict=True)),
            _signed(s.advantage).rjust(9),
        ]
        row = "  " + "  ".join(cells) + "  "
        if full:
            out.append(row + _indented(s.response, " " * len(row)))
        else:
            out.append(row + _one_line(s.response, max(width - len(row), 20)))
    return out


def render_text(
    run_dir: str | Path,
    log: SampleLog,
    steps: list[int],
    info: dict[str, str] | None = None,
    width: int | None = None,
    full: bool = False,
) -> str:
    """The terminal view of ``steps``: each group's prompt, answer and responses (one
    line each, cut to ``width`` unless ``full``), highest reward first."""
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    out = [f"{_title(run_dir, info or {})}  ({log.steps_summary()})"]
    for step in steps:
        groups = group_samples(log.samples.get(step, []))
        out += ["", f"step {step}: {_counts(groups)}"]
        for g in groups:
            out += ["", *_text_group(g, width, full)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{font-size:20px;margin:0 0 4px}
header p{margin:2px 0;color:#c9d1e0;font-size:14px}
main{padding:16px 24px;max-width:1400px}
nav{margin:0 0 16px;font-size:14px;line-height:1.9}
nav a{display:inline-block;padding:0 6px;margin:0 2px;border-radius:4px;background:#e2e6ee;
color:#1d2330;text-decoration:none}
h2{font-size:18px;margin:22px 0 10px}
.note{background:#fff4d6;border:1px solid #e8c66a;padding:6px 10px;border-radius:4px;
font-size:13px;margin:6px 0}
.card{background:#fff;border:1px solid #d6dbe4;border-radius:6px;padding:12px 14px;
margin:0 0 14px;display:flex;gap:16px;align-items:flex-start}
.card .media{flex:0 0 auto;max-width:320px}
.card .media img{max-width:320px;max-height:320px;image-rendering:pixelated;
border:1px solid #d6dbe4;min-width:96px}
.card .body{flex:1 1 auto;min-width:0}
.card h3{font-size:15px;margin:0 0 6px}
.meta{color:#5a6375;font-size:12px;font-weight:normal}
.field{margin:4px 0;font-size:14px}
.field .label{display:inline-block;min-width:64px;color:#5a6375;font-weight:600}
.pre{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,Menlo,Consolas,
monospace;font-size:13px}
table{border-collapse:collapse;margin-top:8px;width:100%;font-size:13px}
th,td{border:1px solid #e0e4ea;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#eef1f6}
td.num{text-align:right;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
td.pos{background:#dff3e4;color:#155d27}
td.neg{background:#fbe1e1;color:#8a1c1c}
td.zero{color:#5a6375}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _sign_class(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "num"
    return "num pos" if value > 0 else "num neg" if value < 0 else "num zero"


def _image_kind(data: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def image_data_uri(run_dir: str | Path, rel: str) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for the image at ``RUN/rel``, or ``(None, note)`` saying
    why it cannot be shown (missing, unreadable, not an image, outside the run)."""
    run = Path(run_dir).resolve()
    path = (run / rel).resolve()
    if not path.is_relative_to(run):
        return None, f"image {rel} is outside the run directory; not embedded"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"image file missing: {rel}"
    except OSError as exc:
        return None, f"image file unreadable: {rel} ({exc.strerror or exc})"
    kind = _image_kind(data)
    if kind is None:
        return None, f"not a PNG, JPEG or GIF image: {rel}"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}", None


def _html_table(g: Group) -> str:
    names = g.part_names
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = [f"<tr><th>#</th><th>response</th><th>reward</th>{head}<th>advantage</th></tr>"]
    for rank, s in enumerate(g.samples, 1):
        parts = "".join(
            f'<td class="{_sign_class(s.parts.get(n))}">{_esc(_plain(s.parts.get(n)))}</td>'
            for n in names
        )
        rows.append(
            f'<tr class="response"><td class="num">{rank}</td>'
            f'<td class="pre">{_esc(s.response)}</td>'
            f'<td class="{_sign_class(s.reward)}">{_esc(_signed(s.reward))}</td>{parts}'
            f'<td class="{_sign_class(s.advantage)}">{_esc(_signed(s.advantage))}</td></tr>'
        )
    return "<table>" + "".join(rows) + "</table>"


def _html_card(run_dir: str | Path, step: int, g: Group) -> str:
    media = ""
    if g.image:
        uri, note = image_data_uri(run_dir, g.image)
        if uri:
            alt = f"image of group {g.index}, step {step}"
            media = f'<div class="media"><img src="{uri}" alt="{_esc(alt)}"></div>'
        else:
            media = f'<div class="media"><p class="note">{_esc(note)}</p></div>'
    title = (
        f'group {g.index} <span class="meta">{_esc(g.id)} · G={len(g.samples)} · '
        f"mean reward {g.mean_reward:+.3f}</span>"
    )
    return (
        f'<section class="card" id="step-{step}-group-{g.index}">{media}<div class="body">'
        f"<h3>{title}</h3>"
        + "".join(
            f'<div class="field"><span class="label">{label}</span> '
            f'<span class="pre {label}">{_esc(text)}</span></div>'
            for label, text in _fields(g)
        )
        + f"{_html_table(g)}</div></section>"
    )


def render_html(
    run_dir: str | Path,
    log: SampleLog,
    steps: list[int],
    info: dict[str, str] | None = None,
) -> str:
    """One self-contained page: a header (run, recipe, loss, steps), a step index when
    several steps are shown, then each group as a card (image, prompt, answer, the
    responses by reward). Everything from the log is HTML-escaped."""
    info = info or {}
    name = info.get("name") or Path(run_dir).name or str(run_dir)
    facts = [f"run {_esc(run_dir)}"]
    facts += [f"{_esc(k)} {_esc(v)}" for k, v in info.items() if k != "name"]
    shown = f"step {steps[0]}" if len(steps) == 1 else f"{len(steps)} steps"
    body = [
        "<header>",
        f"<h1>{_esc(name)} — {_esc(shown)}</h1>",
        f"<p>{' · '.join(facts)}</p>",
        f"<p>{_esc(log.steps_summary())} in {_esc(log.path.name)}</p>",
        "</header><main>",
    ]
    note = log.bad_note()
    if note:
        body.append(f'<p class="note">{_esc(note)}</p>')
    if len(steps) > 1:
        links = " ".join(f'<a href="#step-{s}">{s}</a>' for s in steps)
        body.append(f"<nav>steps: {links}</nav>")
    for step in steps:
        groups = group_samples(log.samples.get(step, []))
        body.append(
            f'<h2 id="step-{step}">step {step} '
            f'<span class="meta">{_esc(_counts(groups))}</span></h2>'
        )
        body += [_html_card(run_dir, step, g) for g in groups]
    body.append("</main>")
    title = f"{name} — {shown}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------------------- command


def show_samples(
    run_dir: str,
    step: str | None = None,
    html_out: str | None = None,
    full: bool = False,
) -> int:
    """``mhpo-vl samples``: print the terminal view, or write the page to ``html_out``;
    a note on stderr for malformed lines. Returns the exit code."""
    want = parse_step(step)
    log = read_samples(run_dir, want)
    steps = select_steps(log, want)
    info = run_info(run_dir)
    note = log.bad_note()
    if html_out is None:
        print(render_text(run_dir, log, steps, info, full=full), end="")
    else:
        out = Path(html_out)
        page = render_html(run_dir, log, steps, info)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UserError(
                f"cannot write {out} ({exc.strerror or exc}); give --html a writable path"
            ) from None
        n = sum(len(log.samples.get(s, [])) for s in steps)
        shown = f"step {steps[0]}" if len(steps) == 1 else f"{len(steps)} steps"
        print(f"wrote {out} ({shown}, {n} responses)")
    if note:
        print(f"mhpo-vl samples: {note}", file=sys.stderr)
    return 0
