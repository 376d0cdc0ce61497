"""mhpo_vl: reinforcement learning for vision-language reasoning with MHPO.

MHPO (Modulated Hazard-aware Policy Optimization, arXiv 2603.16929) and the
GRPO-family baselines live in :mod:`mhpo_vl.algorithms`; the training loop in
:mod:`mhpo_vl.trainer`; evaluation in :mod:`mhpo_vl.eval`.
"""

__version__ = "0.1.0"
