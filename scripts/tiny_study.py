"""The tiny study's entry point (also ``python scripts/reproduce.py tiny-study``); the
study itself is ``mhpo_vl/study/`` (``--help`` for the options)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from mhpo_vl.study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
