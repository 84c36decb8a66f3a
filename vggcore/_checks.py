"""Small checks shared by evaluation and training: a model whose outputs or weights are not finite has no
prediction to score and no state worth calling good."""

import numpy as np


class NonFiniteScores(ValueError):
    """A model produced NaN or infinite class scores."""


def check_finite_scores(scores: np.ndarray, op: str = "evaluate") -> np.ndarray:
    """Returns ``scores`` (a batch of class scores) if every value is finite, else raises ValueError.

    NaN has no rank, so any top-k rule would silently turn a NaN row into some class (sorting puts NaN last,
    making every such image a "class 0" prediction); a NaN or infinite score is an error, never a prediction.
    """
    finite = np.isfinite(scores)
    if not finite.all():
        rows = int((~finite.reshape(len(scores), -1).all(axis=1)).sum()) if len(scores) else 0
        raise NonFiniteScores(f"{op}: the model's class scores are not finite (NaN or inf) for {rows} of {len(scores)} "
                         f"images in a batch; its weights have probably diverged (no image is scored as a "
                         f"prediction from them)")
    return scores


def nonfinite_parameters(model) -> list:
    """Names of the model's parameters holding any NaN or infinite value (empty when all are finite)."""
    return [name for name, param in model.named_parameters() if not np.isfinite(param.numpy()).all()]
