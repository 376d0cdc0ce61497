"""The trainer's parts, along the data flow of a step (the loop is :mod:`mhpo_vl.trainer`):

- :mod:`.state`: the :class:`~.state.Run` (model, optimizer, engine, data, logger),
  set-up, checkpoint save and resume;
- :mod:`.collect`: prompts -> rollouts -> rewards, with dynamic sampling: a
  :class:`~.collect.ScoredBatch`;
- :mod:`.update`: advantages in, optimizer steps of the policy loss out;
- :mod:`.metrics`: how every metric reduces (one table), what a step logs;
- :mod:`.evaluation`: eval suites scored by the eval module.
"""
