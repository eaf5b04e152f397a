"""Linear probes on real LUDB embeddings (CLEF-small through Ray Data actors): rhythm and sex
score above chance with a briefly pretrained encoder and with a seeded random one, and the
bootstrap intervals make sense."""

from __future__ import annotations

import numpy as np
import pytest

from clef_platform.evaluate.embed import ModelSpec, extract
from clef_platform.layout.dataset import open_dataset
from clef_platform.layout.export import read_marker
from tests.fixtures import BUNDLED, ingest, write_export
from clef_platform.evaluate.probes import ProbeConfig, auroc, macro_auroc, run_probe
from clef_platform.evaluate.tasks import compute_labels, load_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ludb(ray_local, tmp_path_factory):
    dest = tmp_path_factory.mktemp("eval_ludb") / "ludb"
    return open_dataset(ingest("ludb", BUNDLED["ludb"], str(dest)))


@pytest.fixture(scope="module")
def pretrained_export(tmp_path_factory):
    """A 'trained-ish' CLEF-small: a few CLEF steps on the CinC sample (disjoint from LUDB),
    committed as a run's export through layout.export like the training job."""
    from clef_model import load_encoder
    from clef_platform.local_pretrain import LocalPretrainConfig, pretrain

    out = tmp_path_factory.mktemp("eval_pretrain")
    s = pretrain(LocalPretrainConfig(source=BUNDLED["cinc2021"], out_dir=out, corpus="cinc2021",
                                     steps=2, batch_size=8, warmup_steps=1, log_every=1))
    return write_export(str(out / "run"), 2, model=load_encoder(s["export"]))


def test_probes_score_above_chance_with_pretrained_and_random(ludb, pretrained_export):
    tasks = {t.name: t for t in load_tasks(["ludb_rhythm", "ludb_sex", "ludb_age"])}
    cfg = ProbeConfig(n_bootstrap=500)
    digest = read_marker(pretrained_export).digest
    for spec in (ModelSpec("export", "small", location=pretrained_export, step=2, digest=digest),
                 ModelSpec("random", "small", seed=0)):
        emb = extract(ludb, spec, lead_index=0, window=5000, actors=2)
        assert emb.X.shape == (200, 256) and np.isfinite(emb.X).all()
        assert emb.n_excluded == 0
        results = {}
        for name, task in tasks.items():
            labels = compute_labels(task, emb.records)
            results[name] = r = run_probe(task, labels, emb.X, emb.records, emb.patient_ids, cfg)
            assert r.lower < r.value < r.upper, (spec.kind, name, r)
            assert r.n_test == labels.has_label.sum()
        # Rhythm (sinus vs other) is a strong signal in lead I: clearly above chance.
        rh = results["ludb_rhythm"]
        assert rh.metric == "auroc" and 0 <= rh.lower and rh.upper <= 1
        assert rh.lower > 0.5 and rh.value > 0.6, (spec.kind, rh)
        # Sex: weaker, but the point estimate beats chance; interval inside [0, 1].
        sx = results["ludb_sex"]
        assert 0 <= sx.lower < sx.value < sx.upper <= 1 and sx.value > 0.5, (spec.kind, sx)
        # Age: MAE below predicting the mean of everyone else would do by a margin? At least
        # sensible: positive, a few years wide interval, under 20 years.
        ag = results["ludb_age"]
        assert ag.metric == "mae" and 0 < ag.lower < ag.value < ag.upper < 20


def test_bootstrap_interval_is_calibrated_on_known_scores():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    s = y + rng.normal(0, 1.0, 400)
    from clef_platform.evaluate.probes import bootstrap_ci

    point = auroc(y, s)
    lo, hi = bootstrap_ci("binary", y, s, np.arange(400), 1000, 0.95, 0)
    assert lo < point < hi and 0.05 < hi - lo < 0.15
    # grouped resampling (two records per patient) gives an interval too
    lo2, hi2 = bootstrap_ci("binary", y, s, np.arange(400) // 2, 300, 0.95, 0)
    assert lo2 < point < hi2
    Y = np.stack([y, 1 - y], 1)
    assert macro_auroc(Y, np.stack([s, -s], 1)) == pytest.approx(point)
