"""Moved to `clef_platform.train.local` (kept so existing callers keep working)."""

from clef_platform.train.local import InMemoryCorpus, LocalPretrainConfig, load_corpus, pretrain

__all__ = ["InMemoryCorpus", "LocalPretrainConfig", "load_corpus", "pretrain"]
