"""Linear-probe evaluation of CLEF checkpoints: tasks as data, Ray Data embeddings, scikit-learn
probes with bootstrap intervals, a results store, a scheduler and an HTML report.

See docs/evaluation.md. Entry point: jobs/evaluate.py.
"""
