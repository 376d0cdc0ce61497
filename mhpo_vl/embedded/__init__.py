"""The embedded default: tiny models of the real Qwen architectures, built offline
(:mod:`.tiny`) and warm-started by a short supervised pass (:mod:`.warmstart`).

Reached from model loading through ``models.policy.MODEL_SOURCES``
(``embedded:<name>`` paths): this package uses ``models``, never the other way round.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[mhpo_vl] {msg}", file=sys.stderr, flush=True)


def resolve(name: str) -> Path:
    """The cached directory of ``embedded:<name>``, built on first use."""
    from mhpo_vl.embedded.tiny import ensure_embedded

    return ensure_embedded(name, log=_log)
