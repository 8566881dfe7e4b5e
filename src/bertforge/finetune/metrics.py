"""Scores from scikit-learn and scipy (the libraries GLUE's own scripts use), and predictions from logits."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def predictions(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Label ids (argmax), multi-hot sets (logit > 0, i.e. probability > 0.5), or the regression output."""
    if problem_type == "regression":
        return logits[:, 0]
    if problem_type == "multi_label_classification":
        return (logits > 0).astype(np.int64)
    return logits.argmax(-1)


def score(metric: str, predicted: np.ndarray, labels: np.ndarray) -> float:
    """One metric of ``predicted`` against ``labels``, in [0, 1] (correlations in [-1, 1])."""
    if metric == "pearson":
        return float(pearsonr(predicted, labels)[0])
    if metric == "spearman":
        return float(spearmanr(predicted, labels)[0])
    if metric == "matthews":
        return float(matthews_corrcoef(labels, predicted))
    if metric == "accuracy":
        return float(accuracy_score(labels, predicted))
    average = {"f1": "binary", "f1_macro": "macro", "f1_micro": "micro"}[metric]
    return float(f1_score(labels, predicted, average=average, zero_division=0.0))
