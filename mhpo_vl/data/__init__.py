"""Datasets of problems: registered names, hub ids or local files, one row schema.

Every loader yields rows in the problem-row schema of :mod:`mhpo_vl.data.templates`.
"""

from typing import Any

from mhpo_vl.data.badrows import BadRow, BadRowLog
from mhpo_vl.data.images import DECODE_MAX_PIXELS, ImageRejected, decode_image, resize_within
from mhpo_vl.data.loading import (
    DATASETS,
    BadRowError,
    ProblemSet,
    check_dataset_spec,
    load_problems,
)
from mhpo_vl.data.sampler import EpochSampler
from mhpo_vl.data.templates import TEMPLATES
from mhpo_vl.data.validate import check_row


def check_section(data: Any) -> None:
    """Check the recipe's ``data`` section: the template and each split's source."""
    TEMPLATES.check("data.template", data.template)
    check_dataset_spec(data.train, "data.train")
    if data.eval is not None:
        check_dataset_spec(data.eval, "data.eval")


__all__ = [
    "DATASETS",
    "DECODE_MAX_PIXELS",
    "BadRow",
    "BadRowError",
    "BadRowLog",
    "EpochSampler",
    "ImageRejected",
    "ProblemSet",
    "check_dataset_spec",
    "check_section",
    "check_row",
    "decode_image",
    "load_problems",
    "resize_within",
]
