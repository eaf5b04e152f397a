"""Records the shard digests that the Python adapters give for LUDB and the CinC 2021 samples
(tests/reference/golden_shards.json), so that the corpus specs that replace them can be checked
byte for byte (tests/test_ingest_spec.py). Run once, before converting an adapter:

    PYTHONPATH=$PWD/platform:$PWD .venv/bin/python tests/reference/record_golden_shards.py
"""

import json
import sys
import tempfile
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.helpers import GOLDEN_INGESTS, ingest_fingerprint  # noqa: E402


def main() -> None:
    ray.init(address="local", include_dashboard=False, num_cpus=2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus, (source, shard_bytes) in GOLDEN_INGESTS.items():
            out[corpus] = ingest_fingerprint(corpus, ROOT / source, Path(tmp) / corpus,
                                             shard_bytes)
    path = ROOT / "tests" / "reference" / "golden_shards.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
