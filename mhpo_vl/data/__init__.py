"""Datasets of problems: registered names, hub ids or local files, one row schema.

Every loader yields rows in the problem-row schema of :mod:`mhpo_vl.data.templates`.
"""

from mhpo_vl.data.loading import (
    DATASETS,
    ProblemSet,
    check_dataset_spec,
    load_problems,
    resize_within,
)
from mhpo_vl.data.sampler import EpochSampler

__all__ = [
    "DATASETS",
    "EpochSampler",
    "ProblemSet",
    "check_dataset_spec",
    "load_problems",
    "resize_within",
]
