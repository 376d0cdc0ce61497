"""``python -m mhpo_vl ...`` is the same as the ``mhpo-vl`` command."""

from mhpo_vl.cli import entry

if __name__ == "__main__":
    entry()
