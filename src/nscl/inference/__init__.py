"""Inference: everything that runs a trained model or parser, for ``ask``, ``parse``, evaluation and training.

``load`` (one checkpoint loader), ``dataset`` (decoded images and compiled questions, the train/dev split),
``examples`` (questions as the parser sees them), ``scenes`` (scene logits from a model or from annotations),
``execute`` (batched program execution, answers, the reference check), ``guided`` (execution-guided parsing),
``evaluate`` (the release's metrics), ``questions_file`` (``nscl parse --questions-json``), ``trace`` and ``ask``
(``nscl ask``). Nothing here imports ``nscl.training``.
"""
