"""GLUE metrics (scikit-learn / scipy), as the GLUE benchmark defines them per task."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["glue_metrics"]


def glue_metrics(task: str | None, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """Return the task's GLUE metrics.

    Classification ``predictions`` are class indices, regression ones floats (STS-B).

    - cola: ``matthews_correlation``
    - mrpc, qqp: ``f1`` (of the positive class) and ``accuracy``
    - stsb: ``pearson`` and ``spearmanr``
    - others (and custom data): ``accuracy``; custom regression data: pearson/spearmanr.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ")
    if task == "stsb" or (task is None and predictions.dtype.kind == "f"):
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearmanr": float(spearmanr(predictions, labels)[0]),
        }
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    result = {"accuracy": float(accuracy_score(labels, predictions))}
    if task in ("mrpc", "qqp"):
        result["f1"] = float(f1_score(labels, predictions))
    return result
