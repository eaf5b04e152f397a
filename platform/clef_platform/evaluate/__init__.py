"""Linear-probe evaluation of CLEF checkpoints: tasks as data, Ray Data embeddings over verified
shard reads, scikit-learn probes with bootstrap intervals, lineage-driven leakage exclusion,
passes that store each result once (`layout.results`), a watch loop, gauges and an HTML report.

See docs/evaluation.md. Entry point: jobs/evaluate.py.
"""
