"""Check visage's scoring head against scikit-learn on the same pairs.

`head_eval --export DIR` writes, for each data set, the exact training and
held-out pairs the engine's `train_head` drew (DIR/<set>/{train,heldout}.x.npy:
float32 [n, 128] features |a - b|; .y.npy: float32 [n] labels 1 same, 0 not)
and the engine's held-out AUCs (DIR/<set>/visage_auc.txt: head, then plain
distance). This script fits the same model independently:

    p(same) = sigmoid(w . x + w_d * ||x||^2 + b)

with sklearn.linear_model.LogisticRegression (lbfgs) on the 128 columns plus
the squared-norm column, class-balanced sample weights n / (2 n_class), and
C = 1 / l2, so that its objective, C * sum_i c_i * logloss_i + ||(w, w_d)||^2 / 2
with the intercept unpenalised, is the engine's divided by l2. The two
held-out AUCs must agree within --tolerance (0.005). As a check that the files
are what the engine calibrated on, the AUC of plain L2 (score = -||x||^2)
computed here must equal the engine's distance AUC within 1e-4.

Prints a table and a closing line "N passed, M failed"; exits 1 on any failure.

    python head_vs_sklearn.py DIR [--l2 1.0] [--tolerance 0.005]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

DIM = 128
L2_AUC_TOLERANCE = 1e-4


def load(d: Path, split: str):
    x = np.load(d / f"{split}.x.npy")
    y = np.load(d / f"{split}.y.npy")
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != DIM:
        raise ValueError(f"{d}/{split}.x.npy: expected float32 [n, {DIM}], got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{d}/{split}.y.npy: expected {x.shape[0]} labels 0/1, got {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def features(x: np.ndarray) -> np.ndarray:
    """The 128 |a - b| columns and the squared distance, in float64."""
    x = x.astype(np.float64)
    return np.hstack([x, (x**2).sum(axis=1, keepdims=True)])


def balanced_weights(y: np.ndarray) -> np.ndarray:
    n, n_pos = len(y), int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("training pairs need both labels")
    return np.where(y == 1, n / (2.0 * n_pos), n / (2.0 * n_neg))


def check(d: Path, l2: float, tolerance: float):
    xt, yt = load(d, "train")
    xh, yh = load(d, "heldout")
    visage_head_auc, visage_l2_auc = (float(v) for v in (d / "visage_auc.txt").read_text().split())
    t = time.perf_counter()
    model = LogisticRegression(C=1.0 / l2, solver="lbfgs", max_iter=20_000, tol=1e-10)
    model.fit(features(xt), yt, sample_weight=balanced_weights(yt))
    secs = time.perf_counter() - t
    if model.n_iter_[0] >= model.max_iter:
        raise RuntimeError(f"{d.name}: lbfgs did not converge in {model.max_iter} iterations")
    sk_auc = roc_auc_score(yh, model.decision_function(features(xh)))
    l2_auc = roc_auc_score(yh, -(xh.astype(np.float64) ** 2).sum(axis=1))
    return {
        "data": d.name,
        "train": len(yt),
        "heldout": f"{int(yh.sum())} / {int(len(yh) - yh.sum())}",
        "visage": visage_head_auc,
        "sklearn": sk_auc,
        "diff": abs(visage_head_auc - sk_auc),
        "l2": l2_auc,
        "visage_l2": visage_l2_auc,
        "l2_diff": abs(l2_auc - visage_l2_auc),
        "w_d": float(model.coef_[0][DIM]),
        "iters": int(model.n_iter_[0]),
        "secs": secs,
        "ok_head": abs(visage_head_auc - sk_auc) <= tolerance,
        "ok_l2": abs(l2_auc - visage_l2_auc) <= L2_AUC_TOLERANCE,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path, help="the directory head_eval --export wrote")
    ap.add_argument("--l2", type=float, default=1.0, help="the engine's TrainOptions.l2 (default 1.0)")
    ap.add_argument("--tolerance", type=float, default=0.005, help="allowed |AUC difference| (default 0.005)")
    args = ap.parse_args()

    sets = sorted(p.parent for p in args.export_dir.glob("*/train.x.npy"))
    if not sets:
        print(f"no exported data sets under {args.export_dir}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    print(
        "| data | train pairs | held-out genuine / impostor | visage head AUC | sklearn AUC | abs diff "
        "| L2 AUC | visage L2 AUC | sklearn w_d | lbfgs iterations | fit time | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in sets:
        try:
            r = check(d, args.l2, args.tolerance)
        except Exception as e:  # a failed check, reported like the others
            print(f"| {d.name} | error: {e} |")
            failed += 1
            continue
        verdicts = []
        for ok, what in ((r["ok_head"], "head AUC"), (r["ok_l2"], "L2 AUC")):
            if ok:
                passed += 1
            else:
                failed += 1
                verdicts.append(f"{what} differs")
        print(
            f"| {r['data']} | {r['train']} | {r['heldout']} | {r['visage']:.6f} | {r['sklearn']:.6f} "
            f"| {r['diff']:.1e} | {r['l2']:.5f} | {r['visage_l2']:.5f} | {r['w_d']:.4f} | {r['iters']} "
            f"| {r['secs']:.1f} s | {'FAILED: ' + ', '.join(verdicts) if verdicts else 'ok'} |"
        )
    print(f"tolerances: head AUC {args.tolerance}, L2 AUC {L2_AUC_TOLERANCE}; C = 1/l2 = {1.0 / args.l2}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
