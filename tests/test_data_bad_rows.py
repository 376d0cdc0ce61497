"""Broken rows and image bombs: dropped where they fail, counted, named; the run goes on.

Real local datasets (jsonl + image files, parquet through ``datasets``) with each kind
of bad row the issue lists; a 12000 x 12000 PNG decoded in a subprocess whose peak
memory is measured.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest
from PIL import Image

from mhpo_vl.config import DatasetSpec
from mhpo_vl.data import EpochSampler, check_row, load_problems
from mhpo_vl.errors import UserError
from mhpo_vl.eval.loaders import load_benchmark


def _png(path, color=(200, 30, 30), size=(40, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def _truncated_jpeg(path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _corrupt_idat_png(path):
    """A PNG whose compressed pixel stream is garbage but whose chunk CRCs are right:
    it passes PIL's ``verify`` (the load-time check) and fails only when decoded."""
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    pos = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    body = bytearray(data[pos + 8 : pos + 8 + length])
    body[2 : length - 4] = bytes((b ^ 0x5A) for b in body[2 : length - 4])
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)) & 0xFFFFFFFF)
    data[pos + 8 : pos + 12 + length] = bytes(body) + crc
    path.write_bytes(bytes(data))
    return path


def _bomb_png(path, side=12000):
    """A flat-colour side x side PNG: a few hundred KB on disk, side**2 pixels decoded."""
    Image.new("L", (side, side), 90).save(path, optimize=False, compress_level=9)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return _bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


ROWS = [
    ("g1", {"image": "img/good1.png"}),
    ("trunc", {"image": "img/trunc.jpg"}),
    ("g2", {"image": "img/good2.png"}),
    ("idat", {"image": "img/idat.png"}),
    ("thin", {"image": "img/thin.png"}),
    ("blank", {"answer": "   "}),
    ("outside", {"choices": ["red", "green"], "answer": "blue"}),
    ("bomb", {"image": "img/bomb.png"}),
    ("g3", {"image": "img/good3.png", "choices": ["red", "green"], "answer": "B"}),
    ("g4", {"image": "img/good1.png"}),
]


@pytest.fixture()
def bad_jsonl(tmp_path, bomb):
    """Eleven rows: four good; a truncated JPEG and a PNG with a corrupt pixel stream
    (found when decoded); a 1x400 image, a blank answer, a gold outside the choices, a
    12000x12000 PNG and a line with latin-1 bytes (found at load)."""
    img = tmp_path / "img"
    img.mkdir()
    for i, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)], 1):
        _png(img / f"good{i}.png", color)
    _truncated_jpeg(img / "trunc.jpg")
    _corrupt_idat_png(img / "idat.png")
    _png(img / "thin.png", size=(1, 400))
    (img / "bomb.png").symlink_to(bomb)
    lines = []
    for rid, fields in ROWS:
        row = {"id": rid, "question": f"Q {rid}?", "answer": "1", "choices": None}
        row = {**row, "image": "img/good1.png", **fields}
        lines.append(json.dumps(row).encode())
    # raw latin-1 bytes inside a string: the json reader stores them, reading the row fails
    lines.insert(
        7,
        b'{"id": "latin", "question": "caf\xe9?", "answer": "1", "choices": null, '
        b'"image": "img/good1.png"}',
    )
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _load(path, **kw):
    return load_problems(DatasetSpec(source=str(path)), kw.pop("key", "data.train"), **kw)


def test_load_time_checks_count_and_name_rows(bad_jsonl, caplog):
    with caplog.at_level(logging.WARNING):
        ps = _load(bad_jsonl)
    assert ps.dropped == {
        "bad_image_geometry": ["thin"],
        "missing_answer": ["blank"],
        "text_not_utf8": ["latin"],
        "answer_not_in_choices": ["outside"],
        "image_too_large": ["bomb"],
    }
    assert ps.num_dropped == 5 and len(ps) == 6
    by_id = {r.id: r for r in ps.bad_rows}
    assert by_id["thin"].file.endswith("img/thin.png") and "1x400" in by_id["thin"].detail
    assert by_id["bomb"].file.endswith("img/bomb.png") and "12000x12000" in by_id["bomb"].detail
    assert by_id["blank"].file == str(bad_jsonl)
    assert all(r.split == "data.train" and r.stage == "load" for r in ps.bad_rows)
    assert "dropped 5 of 11 rows" in caplog.text and "thin" in caplog.text
    assert "img/bomb.png" in caplog.text


def test_decode_failures_are_skipped_named_and_good_rows_keep_their_order(bad_jsonl, caplog):
    ps = _load(bad_jsonl)
    with caplog.at_level(logging.WARNING):
        rows = ps.valid_rows()
    assert [r["id"] for r in rows] == ["g1", "g2", "g3", "g4"]
    assert rows[2]["image"].getpixel((0, 0)) == (0, 0, 200) and rows[2]["answer"] == "B"
    decode = [r for r in ps.bad_rows if r.stage == "decode"]
    assert [(r.id, r.reason) for r in decode] == [
        ("trunc", "unreadable_image"),
        ("idat", "unreadable_image"),
    ]
    assert decode[0].file.endswith("img/trunc.jpg") and decode[1].file.endswith("img/idat.png")
    assert "trunc" in caplog.text and "idat.png" in caplog.text
    metrics = ps.bad_row_metrics()
    assert metrics["data/bad_rows"] == 7.0 and metrics["data/bad_rows/unreadable_image"] == 2.0
    assert metrics["data/bad_rows/image_too_large"] == 1.0
    assert ps.get(1) is None and ps.bad.count() == 7  # remembered, not recorded twice


def test_take_keeps_k_prompts_is_deterministic_and_splits_across_processes(bad_jsonl):
    ids = []
    for _ in range(2):  # two ProblemSets over the same files, same index stream
        ps, sampler = _load(bad_jsonl), EpochSampler(6, seed=5)
        ids.append([[r["id"] for r in ps.take(sampler, 3)] for _ in range(4)])
    assert ids[0] == ids[1] and all(len(step) == 3 for step in ids[0])
    assert not {"trunc", "idat"} & {i for step in ids[0] for i in step}
    # resume: a fresh process from the sampler state gets the same next rows
    ps, sampler = _load(bad_jsonl), EpochSampler(6, seed=5)
    ps.take(sampler, 3)
    state = sampler.state_dict()
    resumed = EpochSampler(6, seed=5)
    resumed.load_state_dict(state)
    assert [r["id"] for r in _load(bad_jsonl).take(resumed, 3)] == ids[0][1]
    # two processes: disjoint shares whose union is the one-process step
    shares = []
    for rank in range(2):
        ps, sampler = _load(bad_jsonl), EpochSampler(6, seed=5)
        shares.append([r["id"] for r in ps.take(sampler, 3, rank=rank, world=2)])
    assert len(shares[0]) == 2 and len(shares[1]) == 1
    assert sorted(shares[0] + shares[1]) == sorted(ids[0][0])


def test_fraction_limit_stops_with_a_message_naming_the_split(bad_jsonl, tmp_path):
    with pytest.raises(UserError, match=r"data\.train \(.*train\.jsonl\): .*max_bad_frac 0\.1.*"):
        _load(bad_jsonl, max_bad_frac=0.1)
    assert len(_load(bad_jsonl, max_bad_frac=0.5)) == 6
    # decode-time: judged once every row (fewer than 100) has been decoded
    (tmp_path / "e").mkdir()
    _png(tmp_path / "e" / "ok.png")
    _truncated_jpeg(tmp_path / "e" / "t.jpg")
    rows = [
        {"id": f"r{i}", "question": "q", "answer": "1", "image": "t.jpg" if i < 3 else "ok.png"}
        for i in range(10)
    ]
    path = tmp_path / "e" / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = _load(path, key="data.eval", max_bad_frac=0.2)
    assert len(ps.valid_rows(limit=2)) == 2  # 3 bad of 5 decoded: too few to judge
    with pytest.raises(UserError, match=r"data\.eval .*3 of 10 decoded.*r0 .*t\.jpg"):
        ps.valid_rows()


def test_choices_string_bytes_question_and_surrogates(tmp_path):
    import datasets

    assert check_row({"question": "q", "answer": "A", "choices": "ABCD"})[0] == "choices_not_list"
    assert check_row({"question": b"q", "answer": "1"})[0] == "question_not_text"
    assert check_row({"question": "q", "answer": "C", "choices": ["x", "y"]})[0] == (
        "answer_not_in_choices"
    )
    assert check_row({"question": "q", "answer": "B", "choices": ["x", "y"]}) is None
    ds = datasets.Dataset.from_dict(
        {
            "id": ["s", "b", "ok"],
            "question": ["q1", "q2", "q3"],
            "answer": ["A", "1", "2"],
            "choices": ["ABCD", None, None],
        }
    )
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ps = load_problems(DatasetSpec(source=str(tmp_path / "t.parquet")))
    assert ps.dropped == {"choices_not_list": ["s"]}
    assert [r["id"] for r in ps.valid_rows()] == ["b", "ok"]
    # a bytes question (a binary column) is rejected, not decoded with a guessed codec
    ds2 = datasets.Dataset.from_dict({"question": [b"q1", b"q2"], "answer": ["1", "2"]})
    ds2.to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(UserError, match=r"no usable rows out of 2: question_not_text 2; first: 0"):
        load_problems(DatasetSpec(source=str(tmp_path / "b.parquet")))
    # a lone surrogate escape makes the fast json reader refuse the file: read by line
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"id": "a", "question": "fine", "answer": "1"}\n'
        '{"id": "b", "question": "bad \\udcff", "answer": "2"}\n'
        '{"id": "c", "question": "fine too", "answer": "3"}\n'
    )
    ps = load_problems(DatasetSpec(source=str(path)))
    assert [r["id"] for r in ps.valid_rows()] == ["a", "c"]
    assert ps.dropped == {"text_not_utf8": ["line 2"]}


def test_eval_benchmark_rows_are_checked_like_training_rows(tmp_path):
    _png(tmp_path / "1.png", size=(8, 8))
    _truncated_jpeg(tmp_path / "t.jpg")
    base = {"question": "Q?", "options": ["2", "3", "4"], "answer": "B", "image": "1.png"}
    base.update(subject="algebra", level=1)
    records = [
        {**base, "id": "ok1"},
        {**base, "id": "trunc", "image": "t.jpg"},
        {**base, "id": "outside", "answer": "9"},
        {**base, "id": "blank", "answer": " "},
        {**base, "id": "ok2"},
    ]
    path = tmp_path / "mv.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    from mhpo_vl.data import BadRowLog

    report = BadRowLog("eval.mathvision_testmini", str(path))
    rows = load_benchmark("mathvision_testmini", source=str(path), report=report)
    assert [r["id"] for r in rows] == ["ok1", "ok2"]
    assert report.counts() == {
        "unreadable_image": 1,
        "answer_not_in_choices": 1,
        "missing_answer": 1,
    }
    trunc = next(r for r in report.rows if "trunc" in r.id)
    assert "testmini row 1" in trunc.id and trunc.file.endswith("t.jpg")
    assert [r["id"] for r in load_benchmark("mathvision_testmini", str(path), limit=2)] == [
        "ok1",
        "ok2",
    ]
    with pytest.raises(UserError, match=r"max_bad_frac"):
        load_benchmark("mathvision_testmini", source=str(path), max_bad_frac=0.1)


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from mhpo_vl.config import DatasetSpec
    from mhpo_vl.data import load_problems
    src, cap = sys.argv[1], int(sys.argv[2])
    ps = load_problems(DatasetSpec(source=src), max_image_pixels=cap)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = ps.valid_rows()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": len(rows), "dropped": ps.dropped, "kb_before": before,
                      "kb_after": after, "size": rows[0]["image"].size if rows else None}))
    """
)


def _measure(path, cap):
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(cap)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_12000_square_png_is_rejected_or_downscaled_with_bounded_memory(tmp_path, bomb):
    path = tmp_path / "bomb.jsonl"
    path.write_text(json.dumps({"id": "b", "question": "q", "answer": "1", "image": str(bomb)}))
    (tmp_path / "two.jsonl").write_text(
        path.read_text() + "\n" + json.dumps({"id": "g", "question": "q", "answer": "1",
                                              "image": str(_png(tmp_path / "g.png"))})
    )  # fmt: skip
    rejected = _measure(tmp_path / "two.jsonl", 64_000_000)  # the default cap
    assert rejected["dropped"] == {"image_too_large": ["b"]} and rejected["rows"] == 1
    shrunk = _measure(path, 200_000_000)  # a recipe raised the cap: decoded, downscaled
    w, h = shrunk["size"]
    assert w * h <= 16_777_216 and w == h
    growth_mb = (shrunk["kb_after"] - shrunk["kb_before"]) / 1024
    print(f"12000x12000 PNG: peak RSS growth {growth_mb:.0f} MB decoding, to {w}x{h}")
    assert growth_mb < 1024
    assert (rejected["kb_after"] - rejected["kb_before"]) / 1024 < 50
