"""Training: one file per stage, all run through one harness (``harness.py``: log, ``metrics.jsonl``, curves,
checkpoints, resume).

``trainer`` (``fit_nscl``: perception and concepts from given programs, the release's "derender"),
``curriculum`` (the release's schedule), ``parser_supervised`` (teacher forcing), ``reinforce`` (REINFORCE on
answers), ``self_training`` (pseudo-labels from answers), ``joint`` (perception and parser together),
``fit_parser`` (``fit_parser`` and ``fit_joint``), ``curves`` (plots). Inference code (loading, execution,
evaluation) lives in ``nscl.inference``, which never imports this package.
"""
