"""Bad rows: each one recorded with its split, id, file and reason; counted; judged.

A split whose bad rows exceed ``data.max_bad_frac`` stops the run with one line naming
the split, the counts and the first bad rows. The fraction combines what is exact and
what is estimated:

- the load-time checks (text fields, image present, header, size) see every row, so
  their fraction ``f_load`` is exact;
- the decode check runs on rows as they are used, so its fraction ``f_decode`` is an
  estimate over the rows decoded so far, judged only once :data:`MIN_DECODED` rows have
  been decoded (or all of them, for a smaller split). One bad image among the first
  three does not stop a run; a split whose images are all broken stops after 100
  decodes, seconds in. With a true bad rate at half the limit (5% against 10%), the
  count at the 100th decode exceeds the limit with probability about 1%; at 2%, 1e-5.

The split's bad fraction is ``f_load + (1 - f_load) * f_decode``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from mhpo_vl.errors import UserError

log = logging.getLogger(__name__)

MIN_DECODED = 100  # decoded rows before the decode-time fraction is judged
SHOW = 5  # bad rows named in a log line or an error


@dataclass(frozen=True)
class BadRow:
    """One unusable row: ``split`` (the recipe key, e.g. ``data.train``), ``id`` (the
    row's id, else its position), ``reason`` (a slug), ``detail`` (one line), ``file``
    (the image or dataset file the row came from; None when neither is local) and
    ``stage`` (``load`` or ``decode``)."""

    split: str
    id: str
    reason: str
    detail: str
    file: str | None = None
    stage: str = "load"

    def describe(self) -> str:
        where = f" ({self.file})" if self.file and self.file not in self.detail else ""
        return f"{self.id}{where}: {self.detail}"


@dataclass
class BadRowLog:
    """The bad rows of one split, and the judgement of their fraction.

    ``total`` is the number of rows the load-time checks saw; ``decoded`` counts rows
    whose images were fully decoded (good or bad). ``max_bad_frac`` None never stops.
    """

    split: str
    source: str
    total: int = 0
    max_bad_frac: float | None = None
    rows: list[BadRow] = field(default_factory=list)
    decoded: int = 0
    _announced: int = 0
    _by_stage: Counter = field(default_factory=Counter, repr=False)

    def add(self, row: BadRow) -> None:
        self.rows.append(row)
        self._by_stage[row.stage] += 1

    def counts(self) -> dict[str, int]:
        """Bad rows by reason (load and decode together), most common first."""
        return dict(Counter(r.reason for r in self.rows).most_common())

    def count(self, stage: str | None = None) -> int:
        """Bad rows found at ``stage`` (``load``/``decode``), or all."""
        return len(self.rows) if stage is None else self._by_stage[stage]

    def metrics(self, prefix: str = "data") -> dict[str, float]:
        """Cumulative counts for ``metrics.jsonl``: ``<prefix>/bad_rows`` and
        ``<prefix>/bad_rows/<reason>``."""
        out = {f"{prefix}/bad_rows": float(len(self.rows))}
        for reason, n in self.counts().items():
            out[f"{prefix}/bad_rows/{reason}"] = float(n)
        return out

    def summary(self) -> str:
        """One line: how many, by reason, and the first few named."""
        by_reason = ", ".join(f"{reason} {n}" for reason, n in self.counts().items())
        named = "; ".join(r.describe() for r in self.rows[:SHOW])
        more = f"; ... {len(self.rows) - SHOW} more" if len(self.rows) > SHOW else ""
        return f"{by_reason}; first: {named}{more}"

    def fraction(self) -> float:
        """The split's estimated bad fraction (see the module docstring)."""
        f_load = self.count("load") / self.total if self.total else 0.0
        f_decode = self.count("decode") / self.decoded if self.decoded else 0.0
        return f_load + (1.0 - f_load) * f_decode

    def judged(self, usable: int) -> bool:
        """Whether enough rows were decoded for the decode fraction to count."""
        return self.decoded >= min(MIN_DECODED, usable)

    def check(self, usable: int) -> None:
        """Raise :class:`UserError` when the bad fraction exceeds ``max_bad_frac``;
        ``usable`` is the number of rows that passed the load-time checks."""
        if self.max_bad_frac is None or not self.rows:
            return
        frac = self.fraction() if self.judged(usable) else self._load_fraction()
        if frac > self.max_bad_frac:
            raise UserError(
                f"{self.split} ({self.source}): {frac:.1%} of rows are bad, over "
                f"data.max_bad_frac {self.max_bad_frac:g} ({self.count('load')} of "
                f"{self.total} rejected at load, {self.count('decode')} of {self.decoded} "
                f"decoded): {self.summary()}; fix or remove these rows, or raise "
                "data.max_bad_frac"
            )

    def _load_fraction(self) -> float:
        return self.count("load") / self.total if self.total else 0.0

    def mark_announced(self) -> None:
        """Count the rows so far as logged (the load-time report logs them itself)."""
        self._announced = len(self.rows)

    def announce(self) -> None:
        """Log the rows found bad since the last call: one warning line per call."""
        new = self.rows[self._announced :]
        if not new:
            return
        self._announced = len(self.rows)
        named = "; ".join(r.describe() for r in new[:SHOW])
        more = f"; ... {len(new) - SHOW} more" if len(new) > SHOW else ""
        log.warning(
            "%s (%s): skipped %d bad row(s) (%d so far: %s): %s%s",
            self.split,
            self.source,
            len(new),
            len(self.rows),
            ", ".join(f"{k} {v}" for k, v in self.counts().items()),
            named,
            more,
        )
