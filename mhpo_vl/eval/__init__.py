"""Evaluation: benchmarks registry (:mod:`.benchmarks`), loaders (:mod:`.loaders`), the
runner (:mod:`.runner`), MathVista-compatible scoring (:mod:`.mathvista`) and report
metrics (:mod:`.metrics`). Scoring reuses :mod:`mhpo_vl.rewards`, so reported accuracy
and training rewards agree. Kept import-free so the CLI parses without loading them."""
