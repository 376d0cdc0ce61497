"""The tiny study: every GRPO-family baseline and MHPO variant, trained on the shipped
tiny recipes through the real CLI, under two settings and three seeds, resumable, and
summarised over seeds (mean and min-max range) in markdown, JSON and PNGs.

- :mod:`~mhpo_vl.study.plan`: settings, variants and seeds as data; the cells they make;
- :mod:`~mhpo_vl.study.runs`: one cell on disk (state, metrics, attempts) and training it;
- :mod:`~mhpo_vl.study.metrics`: one run's numbers (pure functions, with definitions);
- :mod:`~mhpo_vl.study.summary`: every cell's state and the aggregate over done seeds;
- :mod:`~mhpo_vl.study.render` and :mod:`~mhpo_vl.study.plots`: ``summary.md`` and
  ``summary.json`` (tables by :func:`mhpo_vl.report.markdown_table`), PNGs (by
  :func:`mhpo_vl.plotting.plot_bands`);
- :mod:`~mhpo_vl.study.cli`: ``python scripts/reproduce.py tiny-study ...``.

Nothing in the training core imports this package.
"""
