"""``mhpo-vl samples RUN``: the rollout viewer, on run directories built by hand (the
trainer's samples.jsonl format, and the older one without group/advantage/image) and on
a real two-step run of the tiny recipe.

The HTML page is parsed with the standard library's ``html.parser`` and checked cell
by cell; the images are decoded back from their data URIs."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mhpo_vl.cli import main

ROOT = Path(__file__).resolve().parents[1]
EVIL = "</td></table><script>alert('x')</script> & <b>bold</b>"

# step 3, group 0 (an image): responses logged in an order that is not the reward order
GROUP0 = [
    # response, reward, parts, advantage
    ("a triangle", 0.5, {"accuracy": 0.0, "format": 1.0}, -0.2),
    ("square", 2.0, {"accuracy": 1.0, "format": 1.0}, 1.3),
    (EVIL, -1.0, {"accuracy": 0.0, "format": -1.0}, -1.1),
    ("four sides\nso a square", 1.5, {"accuracy": 1.0, "format": 0.5}, 0.0),
]
GROUP1 = [  # step 3, group 1: text only
    ("12", 0.0, {"accuracy": 0.0, "format": 0.0}, -0.7),
    ("14", 1.0, {"accuracy": 1.0, "format": 0.0}, 0.7),
]


# ---------------------------------------------------------------------------- fixtures


def _png(path: Path, size=(7, 5)) -> bytes:
    """A small real PNG with a few coloured pixels; its bytes."""
    img = Image.new("RGB", size, (240, 240, 240))
    img.putpixel((1, 1), (200, 0, 0))
    img.putpixel((size[0] - 2, size[1] - 2), (0, 0, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path.read_bytes()


def _line(step, group, sid, prompt, answer, resp, reward, parts, adv, image) -> str:
    return json.dumps(
        {
            "step": step,
            "group": group,
            "id": sid,
            "prompt": prompt,
            "answer": answer,
            "response": resp,
            "reward": reward,
            "parts": parts,
            "advantage": adv,
            "image": image,
        }
    )


@pytest.fixture
def new_run(tmp_path) -> Path:
    """A run dir in the trainer's format: steps 1 and 3 logged, two malformed lines."""
    run = tmp_path / "my_run"
    png1 = "samples/step-000001/group-0.png"
    png3 = "samples/step-000003/group-0.png"
    _png(run / png1, size=(4, 4))
    _png(run / png3)
    (run / "config.yaml").write_text(
        "name: demo_recipe\nalgorithm:\n  advantage: grpo\n  loss:\n    name: mhpo\n"
    )
    lines = [
        _line(
            1, 0, "shape-1", "Which shape?", "circle", "circle", 1.0, {"accuracy": 1.0}, 0.5, png1
        ),
        _line(
            1, 0, "shape-1", "Which shape?", "circle", "oval", 0.0, {"accuracy": 0.0}, -0.5, png1
        ),
        "{this is not json",
    ]
    for resp, reward, parts, adv in GROUP0:
        lines.append(_line(3, 0, "shape-3", "Which <shape> is it?", "square", resp, reward, parts, adv, png3))  # fmt: skip
    lines.append(json.dumps({"step": 3, "id": "x", "prompt": "p", "response": "r"}))  # no reward
    for resp, reward, parts, adv in GROUP1:
        lines.append(_line(3, 1, "add-3", "Compute 8 plus 6.", "14", resp, reward, parts, adv, None))  # fmt: skip
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A run dir of the older format (no group, advantage or image), groups interleaved."""
    run = tmp_path / "old_run"
    run.mkdir()
    rows = [
        (1, "a", "Is 3 larger than 2?", "yes", "no", 0.0),
        (2, "b", "Compute 2 plus 2.", "4", "5", 0.0),
        (2, "c", "Compute 3 plus 3.", "6", "6", 1.0),
        (2, "b", "Compute 2 plus 2.", "4", "4", 1.0),
        (2, "c", "Compute 3 plus 3.", "6", "7", 0.0),
        (2, "b", "Compute 2 plus 2.", "4", "four", 0.5),
    ]
    lines = [
        json.dumps(
            {
                "step": st,
                "id": sid,
                "prompt": q,
                "answer": a,
                "response": r,
                "reward": rw,
                "parts": {"accuracy": rw},
            }
        )
        for st, sid, q, a, r, rw in rows
    ]
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return run


# ---------------------------------------------------------------------------- parsing


class Page(HTMLParser):
    """The parts of the page the tests look at: every start tag, the step headings,
    and per card (``section.card``) its images, notes, prompt, answer and table rows
    (cell texts and classes)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.cards: dict[str, dict] = {}
        self.headings: list[str] = []
        self.nav_links: list[str] = []
        self.header_text = ""
        self._card: dict | None = None
        self._cell: list[str] | None = None
        self._capture: str | None = None  # "prompt" | "answer" | "note" | "h2" | "header"
        self._buf: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        cls = (a.get("class") or "").split()
        if tag == "header":
            self._capture, self._buf = "header", []
        elif tag == "section" and "card" in cls:
            self._card = {"imgs": [], "notes": [], "rows": []}
            self.cards[a["id"]] = self._card
        elif tag == "img" and self._card is not None:
            self._card["imgs"].append(a["src"])
        elif tag == "a" and a.get("href", "").startswith("#step-"):
            self.nav_links.append(a["href"])
        elif tag == "tr" and self._card is not None:
            self._card["rows"].append([])
        elif tag in ("td", "th") and self._card is not None:
            self._cell = []
            self._card["rows"][-1].append({"tag": tag, "class": cls, "text": self._cell})
        elif tag == "span" and {"prompt", "choices", "answer"} & set(cls):
            self._capture = next(c for c in ("prompt", "choices", "answer") if c in cls)
            self._buf = []
        elif tag == "p" and "note" in cls and self._card is not None:
            self._capture, self._buf = "note", []
        elif tag == "h2":
            self._capture, self._buf = "h2", []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "section":
            self._card = None
        elif tag == "header" and self._capture == "header":
            self.header_text, self._capture = "".join(self._buf), None
        elif self._capture in ("prompt", "choices", "answer") and tag == "span":
            self._card[self._capture] = "".join(self._buf)
            self._capture = None
        elif self._capture == "note" and tag == "p":
            self._card["notes"].append("".join(self._buf))
            self._capture = None
        elif self._capture == "h2" and tag == "h2":
            self.headings.append("".join(self._buf))
            self._capture = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._capture:
            self._buf.append(data)

    def table(self, card_id: str) -> list[dict[str, dict]]:
        """The card's response rows as ``{column: {"text", "class"}}``."""
        rows = self.cards[card_id]["rows"]
        header = ["".join(c["text"]) for c in rows[0]]
        return [
            {
                h: {"text": "".join(c["text"]), "class": c["class"]}
                for h, c in zip(header, r, strict=True)
            }
            for r in rows[1:]
        ]


def _samples(*args: str) -> tuple[int, str, str]:
    """``mhpo-vl samples ARGS`` through the real CLI entry: (exit code, stdout, stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["samples", *args])
    return code, out.getvalue(), err.getvalue()


def _html(run: Path, tmp_path: Path, *args: str) -> Page:
    out = tmp_path / "page" / "out.html"
    code, stdout, _ = _samples(str(run), "--html", str(out), *args)
    assert code == 0
    assert stdout.startswith(f"wrote {out}")
    return Page(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- HTML


def test_html_responses_by_reward_with_parts_and_advantage(new_run, tmp_path):
    page = _html(new_run, tmp_path)
    # the latest step by default; the header names the run, the recipe and its loss
    assert page.headings == ["step 3 2 groups, 6 responses"]
    assert set(page.cards) == {"step-3-group-0", "step-3-group-1"}
    for text in (str(new_run), "demo_recipe", "loss mhpo", "step 3"):
        assert text in page.header_text, text
    card = page.cards["step-3-group-0"]
    assert card["prompt"] == "Which <shape> is it?" and card["answer"] == "square"
    assert "choices" not in card
    header = ["".join(c["text"]) for c in card["rows"][0]]
    assert header == ["#", "response", "reward", "accuracy", "format", "advantage"]
    rows = page.table("step-3-group-0")
    want = sorted(GROUP0, key=lambda r: -r[1])
    assert [r["response"]["text"] for r in rows] == [w[0] for w in want]
    for row, (_, reward, parts, adv) in zip(rows, want, strict=True):
        assert float(row["reward"]["text"]) == reward
        assert float(row["accuracy"]["text"]) == parts["accuracy"]
        assert float(row["format"]["text"]) == parts["format"]
        assert float(row["advantage"]["text"]) == adv
        # the sign is colour-coded
        for col, value in (("reward", reward), ("advantage", adv)):
            sign = "pos" if value > 0 else "neg" if value < 0 else "zero"
            assert sign in row[col]["class"], (col, value, row[col]["class"])
    assert [r["#"]["text"] for r in rows] == ["1", "2", "3", "4"]
    # the text-only group: no image, its own rows
    text_card = page.cards["step-3-group-1"]
    assert text_card["imgs"] == [] and text_card["notes"] == []
    assert [r["response"]["text"] for r in page.table("step-3-group-1")] == ["14", "12"]


def test_html_escapes_everything_from_the_log(new_run, tmp_path):
    page = _html(new_run, tmp_path)
    assert "script" not in page.tags and "b" not in page.tags
    responses = [r["response"]["text"] for r in page.table("step-3-group-0")]
    assert EVIL in responses  # shown as text, whole, in its own cell
    raw = (tmp_path / "page" / "out.html").read_text()
    assert "<script" not in raw and "&lt;script&gt;" in raw


def test_html_embeds_the_image_as_a_data_uri(new_run, tmp_path):
    page = _html(new_run, tmp_path)
    (src,) = page.cards["step-3-group-0"]["imgs"]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data == (new_run / "samples/step-000003/group-0.png").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (7, 5) and img.getpixel((1, 1)) == (200, 0, 0)
    # self-contained: nothing to fetch
    raw = (tmp_path / "page" / "out.html").read_text()
    assert "http://" not in raw and "https://" not in raw and "<link" not in raw


def test_html_names_malformed_lines_and_a_missing_image(new_run, tmp_path):
    (new_run / "samples/step-000003/group-0.png").unlink()
    out = tmp_path / "out.html"
    code, _, err = _samples(str(new_run), "--html", str(out))
    assert code == 0
    page = Page(out.read_text())
    card = page.cards["step-3-group-0"]
    assert card["imgs"] == []
    assert card["notes"] == ["image file missing: samples/step-000003/group-0.png"]
    assert len(page.table("step-3-group-0")) == 4  # the responses are still there
    # the two bad lines: counted and named as file:line, on one stderr line
    assert err.count("\n") == 1
    path = new_run / "samples.jsonl"
    assert "2 malformed lines" in err
    assert f"{path}:3 (not JSON)" in err and f"{path}:8 (no 'reward')" in err


def test_html_all_steps_with_an_index(new_run, tmp_path):
    page = _html(new_run, tmp_path, "--step", "all")
    assert page.nav_links == ["#step-1", "#step-3"]
    assert [h.split()[1] for h in page.headings] == ["1", "3"]
    assert [r["response"]["text"] for r in page.table("step-1-group-0")] == ["circle", "oval"]
    (src,) = page.cards["step-1-group-0"]["imgs"]
    data = base64.b64decode(src.split(",", 1)[1])
    assert data == (new_run / "samples/step-000001/group-0.png").read_bytes()


def test_html_old_format_groups_by_id_and_dashes_the_advantage(old_run, tmp_path):
    page = _html(old_run, tmp_path)
    assert page.headings == ["step 2 2 groups, 5 responses"]
    first = page.cards["step-2-group-0"]
    assert first["prompt"] == "Compute 2 plus 2." and first["imgs"] == []
    rows = page.table("step-2-group-0")
    assert [r["response"]["text"] for r in rows] == ["4", "four", "5"]
    assert [r["advantage"]["text"] for r in rows] == ["—"] * 3
    assert [r["response"]["text"] for r in page.table("step-2-group-1")] == ["6", "7"]


# ---------------------------------------------------------------------------- terminal


def test_terminal_view_sorted_with_parts_and_advantage(new_run):
    code, out, err = _samples(str(new_run))
    assert code == 0
    lines = out.splitlines()
    assert "demo_recipe" in lines[0] and "steps 1..3, 2 logged" in lines[0]
    assert "step 3: 2 groups, 6 responses" in lines
    g0 = lines.index(next(ln for ln in lines if ln.startswith("group 0")))
    assert "samples/step-000003/group-0.png" in lines[g0] and "G=4" in lines[g0]
    assert lines[g0 + 1].split() == ["prompt", "Which", "<shape>", "is", "it?"]
    assert lines[g0 + 2].split() == ["answer", "square"]
    assert lines[g0 + 3].split() == ["reward", "accuracy", "format", "advantage", "response"]
    rows = [ln.split(maxsplit=4) for ln in lines[g0 + 4 : g0 + 8]]
    want = sorted(GROUP0, key=lambda r: -r[1])
    for row, (resp, reward, parts, adv) in zip(rows, want, strict=True):
        assert float(row[0]) == reward and float(row[3]) == adv
        assert [float(row[1]), float(row[2])] == [parts["accuracy"], parts["format"]]
        assert row[4] == " ".join(resp.split())  # one line per response
    assert "malformed" in err


def test_terminal_old_format_and_full(old_run):
    code, out, err = _samples(str(old_run), "--step", "2", "--full")
    assert code == 0 and err == ""
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("    ")]
    assert rows[:2] == [["reward", "accuracy", "advantage", "response"], ["+1.000", "1.000", "—", "4"]]  # fmt: skip


def test_non_finite_numbers_as_the_trainer_writes_them(tmp_path):
    """JSON has no NaN: the trainer writes "nan" strings (or the NaN literal)."""
    base = {"step": 5, "group": 0, "id": "q", "prompt": "p", "answer": "a", "image": None}
    base["choices"] = ["red", "<blue>"]  # an optional key: shown where a log has it
    rows = [
        {"response": "bad", "reward": "nan", "parts": {"accuracy": "nan"}, "advantage": "nan"},
        {"response": "good", "reward": 1.0, "parts": {"accuracy": 1.0}, "advantage": 0.5},
        {"response": "lit", "reward": float("nan"), "parts": {"accuracy": 0.0}, "advantage": 0},
        {"response": "word", "reward": "high", "parts": {}, "advantage": 0.0},
    ]
    lines = [json.dumps({**base, **r}) for r in rows]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    page = _html(tmp_path, tmp_path)
    table = page.table("step-5-group-0")
    assert [r["response"]["text"] for r in table] == ["good", "bad", "lit"]
    assert [r["reward"]["text"] for r in table] == ["+1.000", "nan", "nan"]
    assert [r["accuracy"]["text"] for r in table] == ["1.000", "nan", "0.000"]
    assert page.cards["step-5-group-0"]["choices"] == "A. red  B. <blue>"
    code, _, err = _samples(str(tmp_path))
    assert code == 0 and "samples.jsonl:4 ('reward' is 'high', not a number)" in err


# ---------------------------------------------------------------------------- errors


def test_step_not_logged_is_one_line(new_run):
    code, out, err = _samples(str(new_run), "--step", "2")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "step 2 was not logged" in err and "steps 1..3, 2 logged" in err


def test_missing_samples_file_and_run_dir(tmp_path):
    code, _, err = _samples(str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert f"samples.jsonl not found: {tmp_path / 'samples.jsonl'}" in err
    code, _, err = _samples(str(tmp_path / "nope"))
    assert code == 2 and err.count("\n") == 1 and "run directory not found" in err


def test_only_malformed_lines_is_one_line(tmp_path):
    (tmp_path / "samples.jsonl").write_text(
        '[1, 2]\n{"step": "one", "response": "", "reward": 1}\n'
    )
    code, _, err = _samples(str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "no rollouts logged" in err and "skipped 2 malformed lines" in err
    assert "samples.jsonl:1 (a JSON list, not an object)" in err


def test_executable_missing_step(new_run):
    exe = Path(sys.executable).parent / "mhpo-vl"
    res = subprocess.run(
        [str(exe), "samples", str(new_run), "--step", "7"], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith("mhpo-vl: error: step 7 was not logged") and "Traceback" not in line


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_real_run_shows_a_group_with_its_image(tmp_path):
    """Two steps of the tiny recipe, then the page: a group of G=8 with its image."""
    run = tmp_path / "run"
    exe = Path(sys.executable).parent / "mhpo-vl"
    cmd = [str(exe), "train", "recipes/tiny/mhpo.yaml", "trainer.max_steps=2", "eval.size=8"]
    cmd += [f"trainer.output_dir={run}", "trainer.progress_bar=false"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    assert res.returncode == 0, res.stderr[-3000:]
    first = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert {"group", "advantage", "image"} <= set(first), (
        f"the trainer writes the older samples format (keys {sorted(first)}): "
        "no group/advantage/image, so the page can show no image"
    )
    out = tmp_path / "rollouts.html"
    res = subprocess.run(
        [str(exe), "samples", str(run), "--html", str(out)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    page = Page(out.read_text())
    assert page.headings and page.headings[0].startswith("step 2 ")
    with_image = [cid for cid, card in page.cards.items() if card["imgs"]]
    assert with_image, f"no card with an image among {sorted(page.cards)}"
    rows = page.table(with_image[0])
    assert len(rows) == 8
    rewards = [float(r["reward"]["text"]) for r in rows]
    assert rewards == sorted(rewards, reverse=True)
    assert all(r["advantage"]["text"] != "—" for r in rows)
    src = page.cards[with_image[0]]["imgs"][0]
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
        assert img.size[0] > 0 and img.size[1] > 0
