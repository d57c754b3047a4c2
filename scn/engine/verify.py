"""Face verification as LFW reports it: cosine similarity of L2-normalised embeddings, k-fold
cross-validation where each fold's threshold is the one that is most accurate on the other folds,
accuracy on the held-out fold, mean over folds."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def pair_similarities(emb: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (rows of `pairs` index `emb`)."""
    e = F.normalize(emb.float(), dim=1)
    a, b = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    return (e[a] * e[b]).sum(1).double().numpy()


def best_threshold(sims: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the rule `same if sim > threshold` most accurate on these pairs:
    every cut between distinct sorted similarities is tried (exact, no grid); the first best cut
    from the top wins ties. Thresholds sit midway between neighbouring similarities."""
    order = np.argsort(-sims, kind="stable")
    s, y = sims[order], same[order].astype(np.int64)
    n, pos = len(s), int(y.sum())
    # k = number predicted same (the top k); valid cuts only between distinct values
    tp = np.r_[0, np.cumsum(y)]
    k = np.arange(n + 1)
    correct = tp + (n - pos) - (k - tp)
    valid = np.r_[True, s[:-1] > s[1:], True] if n else np.array([True])
    correct = np.where(valid, correct, -1)
    best = int(np.argmax(correct))
    if best == 0:
        t = float(s[0]) + 1e-6 if n else 0.0
    elif best == n:
        t = float(s[-1]) - 1e-6
    else:
        t = float(s[best - 1] + s[best]) / 2
    return t, correct[best] / max(n, 1)


def verification_accuracy(sims: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """Mean and std over folds of the held-out accuracy at the threshold chosen on the other folds."""
    accs, thresholds = [], []
    for f in np.unique(folds):
        test = folds == f
        t, _ = best_threshold(sims[~test], same[~test])
        accs.append(float(((sims[test] > t) == same[test]).mean()))
        thresholds.append(t)
    return {
        "verify/acc": float(np.mean(accs)),
        "verify/acc_std": float(np.std(accs)),
        "verify/threshold": float(np.mean(thresholds)),
        "verify/pairs": len(sims),
    }


@torch.no_grad()
def embed(model, batches, device, memory_format, autocast, progress: bool = False) -> torch.Tensor:
    """Embeddings of every image the batches yield, in their order, on the CPU in fp32."""
    was_training = model.training
    model.eval()
    out = []
    for x, _ in tqdm(batches, desc="verify", leave=False, disable=not progress):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        with autocast():
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out).cpu()
