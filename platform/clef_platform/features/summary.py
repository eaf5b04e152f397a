"""The build summary: patients, observations per feature, rejects, SCORE2 input coverage, risk."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clef_platform.features.schema import SCORE2_INPUTS, Rejects


def distribution(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return {"n": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {"n": int(len(v)), "mean": float(v.mean()),
            **{f"p{p}": float(x) for p, x in zip((5, 25, 50, 75, 95), q)}}


def build_summary(obs: pd.DataFrame, patients: list[str], rejects: Rejects,
                  ecg_risk: pd.DataFrame | None, latest_risk: pd.DataFrame | None) -> dict:
    per_feature = (obs.groupby("feature").agg(observations=("value", "size"),
                                              patients=("patient_id", "nunique")))
    n = max(len(patients), 1)
    coverage = {f: {"patients": int(obs.loc[obs["feature"] == f, "patient_id"].nunique()),
                    "fraction": float(obs.loc[obs["feature"] == f, "patient_id"].nunique() / n)}
                for f in SCORE2_INPUTS}
    summary = {
        "patients": len(patients),
        "patients_by_corpus": {k: int(v) for k, v in
                               pd.Series([p.split("/", 1)[0] for p in patients])
                               .value_counts().items()},
        "observations": {f: {k: int(v) for k, v in row.items()}
                         for f, row in per_feature.to_dict("index").items()},
        "rejected": {f"{s}|{f}|{r}": c for (s, f, r), c in sorted(rejects.counts().items())},
        "coverage": coverage,
    }
    for name, frame in (("risk_at_ecgs", ecg_risk), ("risk_latest", latest_risk)):
        if frame is not None and len(frame):
            summary[name] = {"risk": distribution(frame["risk"].to_numpy()),
                             "missing_fraction": distribution(
                                 frame["missing_fraction"].to_numpy())}
    return summary


def format_summary(s: dict) -> str:
    lines = [f"patients: {s['patients']}  by corpus: {s['patients_by_corpus']}",
             "observations per feature (rows / patients):"]
    for f, d in s["observations"].items():
        lines.append(f"  {f:<11} {d['observations']:>7} / {d['patients']}")
    lines.append("rejected values (source|feature|reason: count):")
    lines += [f"  {k}: {v}" for k, v in s["rejected"].items()] or ["  none"]
    lines.append("SCORE2 input coverage (patients with a valid value):")
    for f, d in s["coverage"].items():
        lines.append(f"  {f:<11} {d['patients']:>6}  {100 * d['fraction']:5.1f} %")
    for name in ("risk_at_ecgs", "risk_latest"):
        if name in s:
            r, m = s[name]["risk"], s[name]["missing_fraction"]
            if r.get("n"):
                lines.append(f"{name}: n={r['n']} mean={r['mean']:.4f} p5={r['p5']:.4f} "
                             f"p50={r['p50']:.4f} p95={r['p95']:.4f}; missing fraction mean="
                             f"{m['mean']:.3f}")
    return "\n".join(lines)
