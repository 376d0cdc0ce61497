"""Dataset loading from local files of the hub schemas, bad-row reporting, data order."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from mhpo_vl.config import DatasetSpec
from mhpo_vl.data import EpochSampler, load_problems, resize_within
from mhpo_vl.errors import UserError


def _png(path, color=(255, 0, 0), size=(40, 30)):
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture()
def jsonl_dataset(tmp_path):
    """Five rows: 3 good, one missing answer, one image path that does not exist,
    one corrupt image file."""
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", (0, 255, 0))
    _png(tmp_path / "img" / "c.png", (0, 0, 255))
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    rows = [
        {"pid": "p1", "problem": "How many?", "answer": "3", "image": "img/a.png"},
        {
            "pid": "p2",
            "problem": "Color?",
            "answer": "green",
            "image": "img/b.png",
            "choices": ["red", "green"],
        },
        {"pid": "p3", "problem": "Missing answer", "answer": "", "image": "img/a.png"},
        {"pid": "p4", "problem": "Lost image", "answer": "1", "image": "img/nope.png"},
        {"pid": "p5", "problem": "Corrupt", "answer": "2", "image": "img/bad.png"},
        {"pid": "p6", "problem": "Blue?", "answer": "4", "image": "img/c.png"},
    ]
    for r in rows:
        r.setdefault("choices", None)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_relative_image_paths_drops_and_reports_bad_rows(jsonl_dataset, caplog):
    with caplog.at_level(logging.WARNING):
        ps = load_problems(DatasetSpec(source=str(jsonl_dataset)), "data.train")
    assert len(ps) == 3
    assert ps.num_dropped == 3
    assert ps.dropped == {
        "missing_answer": ["p3"],
        "image_not_found": ["p4"],
        "unreadable_image": ["p5"],
    }
    msg = caplog.text
    assert "dropped 3 of 6 rows" in msg and "p3" in msg and "p4" in msg and "p5" in msg
    row = ps[1]
    assert row["id"] == "p2" and row["question"] == "Color?" and row["answer"] == "green"
    assert row["choices"] == ["red", "green"]
    assert row["image"].size == (40, 30) and row["image"].getpixel((0, 0)) == (0, 255, 0)


def test_rows_without_an_image_are_counted(tmp_path):
    """``ProblemSet.text_only``: a vision model trained on them leaves its vision tower
    without gradients (DDP must then look for unused parameters). In a dataset with an
    image column a row without one is a bad row; without the column, every row counts."""
    _png(tmp_path / "a.png")
    rows = [
        {"problem": "How many?", "answer": "3", "image": "a.png"},
        {"problem": "2+2?", "answer": "4", "image": None},
    ]
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixed = load_problems(DatasetSpec(source=str(path)), "data.train")
    assert len(mixed) == 1 and mixed.text_only == 0 and mixed.dropped == {"missing_image": ["1"]}
    assert load_problems(DatasetSpec(source="synthetic_vision", size=20)).text_only == 0
    assert load_problems(DatasetSpec(source="synthetic_text", size=20)).text_only == 20


def test_explicit_column_mapping_and_bad_column_names(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "1+1?", "sol": "2", "other": "x"}) + "\n")
    ps = load_problems(DatasetSpec(source=str(path), columns={"question": "q", "answer": "sol"}))
    assert ps[0]["question"] == "1+1?" and ps[0]["answer"] == "2" and ps[0]["image"] is None
    with pytest.raises(UserError, match=r"columns.answer: no column 'nope'.*q, sol, other"):
        load_problems(DatasetSpec(source=str(path), columns={"question": "q", "answer": "nope"}))
    with pytest.raises(UserError, match="no answer column found"):
        load_problems(DatasetSpec(source=str(path), columns={"question": "q"}))


def test_parquet_and_save_to_disk_with_image_feature(tmp_path):
    import datasets

    imgs = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"question": ["a", "b", "c"], "answer": ["1", "2", "3"], "image": imgs},
        features=datasets.Features(
            {
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "t.parquet", tmp_path / "saved"):
        ps = load_problems(DatasetSpec(source=str(source)))
        assert len(ps) == 3 and ps.num_dropped == 0
        assert ps[2]["image"].getpixel((0, 0)) == (80, 0, 0) and ps[2]["answer"] == "3"


def test_imagefolder_with_metadata(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "train").mkdir(parents=True)
    meta = []
    for i in range(2):
        _png(folder / "train" / f"{i}.png")
        meta.append({"file_name": f"{i}.png", "question": f"q{i}", "answer": str(i)})
    (folder / "train" / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    ps = load_problems(DatasetSpec(source=str(folder), split="train"))
    assert len(ps) == 2 and {ps[0]["answer"], ps[1]["answer"]} == {"0", "1"}
    assert ps[0]["image"].size == (40, 30)


def test_all_rows_bad_is_an_error_naming_the_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "x", "answer": None}) + "\n")
    with pytest.raises(UserError, match=r"data.train .*no usable rows out of 1"):
        load_problems(DatasetSpec(source=str(path)), "data.train")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("x")
    with pytest.raises(UserError, match=r"d.txt: unsupported file type"):
        load_problems(DatasetSpec(source=str(path)))


def test_resize_within_bounds_keeps_aspect():
    img = Image.new("RGB", (400, 200))
    small = resize_within(img, None, 20_000)
    assert small.size[0] * small.size[1] <= 20_000 and abs(small.size[0] / small.size[1] - 2) < 0.05
    big = resize_within(Image.new("RGB", (20, 10)), 5_000, None)
    assert big.size[0] * big.size[1] >= 4_900
    assert resize_within(img, 1000, 100_000) is img


def test_epoch_sampler_covers_each_epoch_and_resumes_exactly():
    s = EpochSampler(10, seed=3)
    first = s.next(10)
    assert sorted(first) == list(range(10))
    s.next(4)
    state = s.state_dict()
    rest = s.next(13)
    t = EpochSampler(10, seed=3)
    t.load_state_dict(state)
    assert t.next(13) == rest
    assert EpochSampler(10, seed=4).next(10) != first
    with pytest.raises(ValueError, match="for 10 rows, dataset has 9"):
        EpochSampler(9, seed=3).load_state_dict(state)
