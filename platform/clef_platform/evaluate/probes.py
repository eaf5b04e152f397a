"""Linear probes on frozen embeddings (scikit-learn), with bootstrap confidence intervals.

- binary / multi-label: StandardScaler + LogisticRegression (one-vs-rest for multi-label);
  metric macro AUROC over the probed classes.
- regression: StandardScaler + Ridge; metric MAE.

Regularisation (C, alpha) is chosen on the validation split of a `folds` scheme (then the probe
is refitted on train + validation and scored on test), or, for `kfold`, by inner patient-level
K-fold inside every outer training part (nested CV; the metric is computed on the pooled
out-of-fold predictions). Intervals: percentile bootstrap over patients (records of one patient
are resampled together), seeded.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clef_platform.digests import stable_hash
from clef_platform.evaluate.tasks import Labels, TaskSpec, _norm, get_field


@dataclass(frozen=True)
class ProbeConfig:
    logistic_C: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    ridge_alpha: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    max_iter: int = 2000
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def hash(self, task: TaskSpec, embed_version: str) -> str:
        """The probe configuration hash of the results key: probe settings + task + view."""
        return stable_hash({"probe": asdict(self), "task": task.fingerprint(),
                            "embed": embed_version})


@dataclass
class ProbeResult:
    metric: str                       # auroc | mae
    value: float
    lower: float
    upper: float
    n_records: int                    # labelled records probed
    n_train: int                      # folds: train+val; kfold: mean outer training size
    n_test: int                       # records scored
    classes: list[str]
    per_class: dict[str, float] = field(default_factory=dict)
    chosen: list[float] = field(default_factory=list)   # regularisation chosen (per fit)


# ---------------------------------------------------------------------------------- metrics

def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Rank-based AUROC (ties averaged); NaN when y has a single class."""
    y = np.asarray(y).astype(bool)
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def macro_auroc(Y: np.ndarray, S: np.ndarray) -> float:
    Y, S = np.atleast_2d(Y.T).T, np.atleast_2d(S.T).T
    vals = [auroc(Y[:, j], S[:, j]) for j in range(Y.shape[1])]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, float) - np.asarray(p, float))))


def _metric(kind: str, y: np.ndarray, s: np.ndarray) -> float:
    return mae(y, s) if kind == "regression" else macro_auroc(y, s)


def _metric_rows(kind: str, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The metric of every resample: y, s are [B, n] (or [B, n, C] for multi-label)."""
    if kind == "regression":
        return np.abs(y.astype(float) - s).mean(axis=1)
    if y.ndim == 2:
        y, s = y[..., None], s[..., None]
    per_class = []
    for j in range(y.shape[2]):
        yj, sj = y[:, :, j].astype(bool), s[:, :, j]
        npos = yj.sum(1)
        nneg = yj.shape[1] - npos
        r = rankdata(sj, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = ((r * yj).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)
        a[(npos == 0) | (nneg == 0)] = np.nan
        per_class.append(a)
    per_class = np.stack(per_class, axis=1)            # [B, C]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN rows stay NaN
        return np.nanmean(per_class, axis=1)           # NaN where no class is scorable


def bootstrap_ci(kind: str, y: np.ndarray, s: np.ndarray, groups: np.ndarray,
                 n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the metric over patient-level bootstrap resamples."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    picks = rng.integers(0, len(uniq), (n_boot, len(uniq)))
    if len(uniq) == len(groups):
        # One record per patient (the common case): all resamples at once.
        idx = np.argsort(inv)[picks]                     # [n_boot, n] record indices
        vals = _metric_rows(kind, y[idx], s[idx])
    else:
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
        vals = np.array([_metric(kind, y[i], s[i]) for i in
                         (np.concatenate([members[g] for g in p]) for p in picks)])
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------- probes

def _model(kind: str, param: float, cfg: ProbeConfig):
    if kind == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=param))
    lr = LogisticRegression(C=param, max_iter=cfg.max_iter)
    if kind == "multilabel":
        return make_pipeline(StandardScaler(), OneVsRestClassifier(lr))
    return make_pipeline(StandardScaler(), lr)


def _fit_predict(kind: str, param: float, cfg: ProbeConfig, Xtr, ytr, Xte) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # convergence / absent-label warnings
        m = _model(kind, param, cfg).fit(Xtr, ytr)
        if kind == "regression":
            return m.predict(Xte)
        p = m.predict_proba(Xte)
        return p[:, 1] if kind == "binary" else p


def _grid(kind: str, cfg: ProbeConfig) -> tuple[float, ...]:
    return cfg.ridge_alpha if kind == "regression" else cfg.logistic_C


def _better(kind: str, a: float, b: float) -> bool:
    if np.isnan(b):
        return not np.isnan(a)
    if np.isnan(a):
        return False
    return a < b if kind == "regression" else a > b


def _select(kind: str, cfg: ProbeConfig, splits, X, y) -> float:
    """The grid value with the best mean validation metric over `splits` [(train, val)]."""
    best, best_v = _grid(kind, cfg)[0], float("nan")
    for param in _grid(kind, cfg):
        scores = [_metric(kind, y[va], _fit_predict(kind, param, cfg, X[tr], y[tr], X[va]))
                  for tr, va in splits]
        scores = [v for v in scores if not np.isnan(v)]
        v = float(np.mean(scores)) if scores else float("nan")
        if _better(kind, v, best_v):
            best, best_v = param, v
    return best


def _strata(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "binary":
        return y
    if kind == "multilabel":
        # Stratify on the rarest probed class so that each fold sees some of its positives.
        return y[:, int(np.argmin(y.sum(0)))] if y.shape[1] else np.zeros(len(y), int)
    return np.zeros(len(y), int)


def _group_folds(kind: str, y, groups, k: int, seed: int):
    k = min(k, len(np.unique(groups)))
    if kind == "regression":
        return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, groups=groups))
    strata = _strata(kind, y)
    k = max(2, min(k, int(np.bincount(strata).min()) if strata.any() else k))
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                .split(np.zeros(len(y)), strata, groups))


def run_probe(task: TaskSpec, labels: Labels, X: np.ndarray, records: list[dict[str, Any]],
              groups: np.ndarray, cfg: ProbeConfig = ProbeConfig()) -> ProbeResult:
    """Probe `task` on embeddings `X` [N, D] of `records`; labels from `compute_labels`."""
    kind = task.label.kind
    keep = labels.has_label
    X, y, groups = X[keep], labels.y[keep], np.asarray(groups)[keep]
    recs = [r for r, k in zip(records, keep) if k]
    if kind == "regression":
        y = y.astype(float)
    sch = task.scheme
    chosen: list[float] = []

    if sch.kind == "folds":
        fold = np.array([_norm(get_field(r, sch.field)) if get_field(r, sch.field) is not None
                         else "" for r in recs])
        tr, va, te = (np.isin(fold, list(sch.train)), np.isin(fold, list(sch.val)),
                      np.isin(fold, list(sch.test)))
        if not (tr.any() and va.any() and te.any()):
            raise ValueError(f"{task.name}: folds scheme found train/val/test sizes "
                             f"{int(tr.sum())}/{int(va.sum())}/{int(te.sum())}; "
                             f"is '{sch.field}' in the records' metadata?")
        itr, iva, ite = map(np.flatnonzero, (tr, va, te))
        param = _select(kind, cfg, [(itr, iva)], X, y)
        chosen.append(param)
        fit = np.concatenate([itr, iva])
        scores = _fit_predict(kind, param, cfg, X[fit], y[fit], X[ite])
        y_eval, s_eval, g_eval = y[ite], scores, groups[ite]
        n_train = len(fit)
    else:
        outer = _group_folds(kind, y, groups, sch.k, sch.seed)
        s_eval = np.zeros(y.shape, float) if kind != "multilabel" else np.zeros(y.shape, float)
        for i, (otr, ote) in enumerate(outer):
            inner = _group_folds(kind, y[otr], groups[otr], sch.inner_k, sch.seed + 1 + i)
            inner = [(otr[a], otr[b]) for a, b in inner]
            param = _select(kind, cfg, inner, X, y)
            chosen.append(param)
            s_eval[ote] = _fit_predict(kind, param, cfg, X[otr], y[otr], X[ote])
        y_eval, g_eval = y, groups
        n_train = int(np.mean([len(a) for a, _ in outer]))

    value = _metric(kind, y_eval, s_eval)
    lo, hi = bootstrap_ci(kind, y_eval, s_eval, g_eval, cfg.n_bootstrap, cfg.confidence, cfg.seed)
    per_class = {}
    if kind == "multilabel":
        per_class = {c: auroc(y_eval[:, j], s_eval[:, j]) for j, c in enumerate(labels.classes)}
    elif kind == "binary":
        per_class = {labels.classes[0]: value}
    return ProbeResult(metric=task.metric, value=value, lower=lo, upper=hi,
                       n_records=len(y), n_train=n_train, n_test=len(y_eval),
                       classes=list(labels.classes), per_class=per_class, chosen=chosen)
