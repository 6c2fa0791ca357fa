"""Detection and extraction metrics, on scikit-learn's implementations.

Detection follows the paper: an attack's queries are the positives, a benign user's test
queries the negatives, and a higher score means more attacker-like.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve


def _scores_and_truth(benign: np.ndarray, attack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    benign = np.asarray(benign, dtype=np.float64).reshape(-1)
    attack = np.asarray(attack, dtype=np.float64).reshape(-1)
    if benign.size == 0 or attack.size == 0:
        raise ValueError("detection metrics need benign and attack scores")
    truth = np.concatenate([np.zeros(benign.size), np.ones(attack.size)])
    return truth, np.concatenate([benign, attack])


def fpr_at_tpr(benign: np.ndarray, attack: np.ndarray, tpr: float = 0.95) -> float:
    """Lowest false-positive rate at which at least ``tpr`` of the attack queries are caught."""
    truth, scores = _scores_and_truth(benign, attack)
    fpr, tprs, _ = roc_curve(truth, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def detection_metrics(
    benign: np.ndarray, attack: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """AUROC, AUPR (attack = positive class), FPR at 95 % TPR; with a threshold (flag when
    ``score > threshold``), the TPR and FPR it achieves."""
    truth, scores = _scores_and_truth(benign, attack)
    out = {
        "auroc": float(roc_auc_score(truth, scores)),
        "aupr": float(average_precision_score(truth, scores)),
        "fpr_at_95_tpr": fpr_at_tpr(benign, attack, 0.95),
        "n_benign": int(np.size(benign)),
        "n_attack": int(np.size(attack)),
    }
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["tpr_at_threshold"] = float((np.asarray(attack) > threshold).mean())
        out["fpr_at_threshold"] = float((np.asarray(benign) > threshold).mean())
    return out


def roc_points(benign: np.ndarray, attack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` arrays of the ROC curve, for plots."""
    truth, scores = _scores_and_truth(benign, attack)
    fpr, tpr, _ = roc_curve(truth, scores)
    return fpr, tpr


def clone_metrics(
    clone_labels: np.ndarray, victim_labels: np.ndarray, true_labels: np.ndarray
) -> dict[str, float]:
    """Clone accuracy (against the true labels) and fidelity (agreement with the victim)."""
    return {
        "clone_accuracy": float(accuracy_score(true_labels, clone_labels)),
        "clone_fidelity": float(accuracy_score(victim_labels, clone_labels)),
    }


def answer_accuracy(answered_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Accuracy of the labels a user received (a refused answer, -1, counts as wrong)."""
    return float(accuracy_score(true_labels, answered_labels))
