"""``mhpo-vl`` with a known bug put back, for tests that show a check catches it:

    python -m torch.distributed.run ... tests/run_with_bug.py BUG train RECIPE [KEY=VALUE]

BUG is a name in :data:`BUGS`; the rest is the ``mhpo-vl`` command line.
"""

from __future__ import annotations

import sys


def eval_share_unpadded() -> None:
    """Each process evaluates only its own rows, without padding to equal counts: under
    FSDP, 8 rows on one process and 7 on the other make a different number of
    ``generate`` calls, each gathering the weights collectively."""
    from mhpo_vl.training import evaluation

    real = evaluation.share
    evaluation.share = lambda rows, rank, world, lockstep: real(rows, rank, world, False)


BUGS = {"eval_share_unpadded": eval_share_unpadded}

if __name__ == "__main__":
    BUGS[sys.argv[1]]()
    from mhpo_vl.cli import entry

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    entry()
