"""Datasets of problems: registered names, hub ids or local files, one row schema.

Every loader yields rows in the problem-row schema of :mod:`mhpo_vl.data.templates`.
"""

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
from mhpo_vl.data.validate import check_row

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
    "check_row",
    "decode_image",
    "load_problems",
    "resize_within",
]
