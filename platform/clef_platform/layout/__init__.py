"""What the platform stores, and the one place each stored format is written and read.

| module | owns |
|---|---|
| `layout.shards` | the sample format (`<key>.meta.json` + `<key>.signal.npy`), deterministic shard tars, the verified shard reader |
| `layout.dataset` | a dataset root: shard names, shard index (counts, SHA-256), manifest and quarantine schemas, dataset digest, the ingest claim |
| `layout.checkpoint` | training checkpoints: plain state only (`weights_only=True` loads), per-rank digest lists, `verify` before use |
| `layout.export` | a run's encoder exports: attempts, the typed `_COMPLETE` marker with lineage and file digests |
| `layout.results` | a run's evaluation results: one object per result, keyed by export and dataset digests |
| `layout.datacard` | a dataset's data card `<dataset>/datacard/`: index.html, one PNG per section, card.json (every figure's numbers) |
| `layout.throughput` | a run's throughput page `<run>/report/`: index.html, one PNG per panel, page.json (source, time range) |

docs/architecture.md has the table of every stored object (path, writer, readers, schema, digest).
"""
