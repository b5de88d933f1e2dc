"""Judging a trained model: metrics on softmax probabilities (accuracy, ROC AUC, confusion,
axion recall by mass), batched inference, the figures, and ``evaluate_run`` on a run's test
split or any folder with the same classes.

Imports ``core``, ``data``, ``registry`` and ``runs``; training uses it for validation.
"""

# The splits of a run that evaluate_run scores. Here, light, so that the command line offers
# them without loading the evaluation engine (NumPy, the data readers).
SPLITS = ("test", "val", "train")
# Images per inference batch when a model is scored (evaluate, the out-of-distribution
# detector's features, validation during training): no gradients, so larger than training's.
EVAL_BATCH_SIZE = 256


def tta_tag(tta: str) -> str:
    """What a default evaluation folder's name gains under test-time augmentation
    (``evaluation-rot180/``), so that it never replaces the plain evaluation."""
    return "" if tta == "none" else f"-{tta}"
