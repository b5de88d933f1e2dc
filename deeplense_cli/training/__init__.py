"""Training one run: the resolved configuration (``config``), the loop (``loop.Trainer``,
``loop.train``), the learning-rate schedule and the time budget's plan (``budget``),
augmentation, the optimiser, best-epoch and early-stopping rules, progress reporters, and the
accuracy benchmark over model x dataset.

Imports ``core``, ``data``, ``registry``, ``runs`` and ``evaluation``; ``tune``, ``cluster``
and the commands build on it.
"""
