"""Corpus specs: corpora declared in YAML. LUDB and CinC 2021, once Python adapters, are specs in
corpora/ and give the shards the adapters gave, byte for byte (golden digests recorded from the
adapters before they were removed); a spec with a mistake is refused naming the field, before a
record is read."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clef_platform.ingest.adapters import available_adapters, get_adapter
from clef_platform.ingest.spec import SpecAdapter, SpecError, load_spec, parse_spec
from tests.helpers import GOLDEN_INGESTS, REPO, ingest_fingerprint

LUDB = REPO / "data" / "ludb"
GOLDEN = json.loads((REPO / "tests" / "reference" / "golden_shards.json").read_text())


def test_project_specs_are_found_by_name():
    assert {"ludb", "cinc2021"} <= set(available_adapters())
    assert isinstance(get_adapter("ludb"), SpecAdapter)
    with pytest.raises(KeyError, match="no adapter or corpus spec 'nope'"):
        get_adapter("nope")


@pytest.mark.slow
@pytest.mark.parametrize("corpus", sorted(GOLDEN_INGESTS))
def test_spec_gives_the_adapters_shards_byte_for_byte(corpus, ray_local, tmp_path):
    source, shard_bytes = GOLDEN_INGESTS[corpus]
    got = ingest_fingerprint(corpus, REPO / source, tmp_path / corpus, shard_bytes)
    assert got == GOLDEN[corpus]
    assert got["records"] > 0 and len(got["shards"]) > 1


def _ludb_table(tmp_path: Path) -> Path:
    """LUDB's own header values (age, sex) carried in a metadata table instead of the header,
    as corpora such as PTB-XL ship them; one record left out of the table."""
    corpus = tmp_path / "ludb"
    corpus.mkdir()
    refs = list(get_adapter("ludb").list_records(LUDB))[:6]
    for ref in refs:
        for suffix in (".hea", ".dat"):
            src = Path(ref.source_path + suffix)
            (corpus / src.name).write_bytes(src.read_bytes())
    with open(corpus / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record", "age_years", "gender"])
        for ref in refs[:-1]:
            w.writerow([ref.record_id, ref.age, {"M": "0", "F": "1"}[ref.sex]])
    return corpus


def test_metadata_from_a_table_joined_on_the_record_id(tmp_path):
    corpus = _ludb_table(tmp_path)
    spec = parse_spec({
        "name": "ludb-table", "format": "wfdb", "records": "*.hea", "header_comments": False,
        "table": {"path": "meta.csv", "key": {"column": "record", "from": "record_id"},
                  "columns": {"age": "age_years", "sex": "gender"},
                  "sex_values": {"0": "M", "1": "F"}}}, "inline", source=corpus)
    from_header = {r.record_id: r for r in get_adapter("ludb").list_records(corpus)}
    refs = {r.record_id: r for r in SpecAdapter(spec).list_records(corpus)}
    assert set(refs) == set(from_header)
    missing = [r for r in refs.values() if "listing_error" in r.labels]
    assert len(missing) == 1 and missing[0].source_path == ""      # quarantined, not dropped
    assert "no row with record" in missing[0].labels["listing_error"]
    for rid, ref in refs.items():
        if ref is missing[0]:
            continue
        assert (ref.age, ref.sex, ref.patient_id) == (
            from_header[rid].age, from_header[rid].sex, f"ludb-table/{rid}")


GOOD = {"name": "x", "format": "wfdb", "records": "**/*.hea"}
MISTAKES = [
    ({"format": "edf2"}, "'format': unknown format 'edf2'"),
    ({"record_id": {"regex": r"(\d+)"}}, "'record_id.regex': has no named group"),
    ({"patient_id": {"regex": r"(?P<record_id>\d+)"}}, "'patient_id.regex': has no named group"),
    ({"record_id": {"regex": "(?P<record_id>[0-9"}}, "'record_id.regex': not a regular expression"),
    ({"table": {"path": "meta.csv", "key": {"column": "record"},
                "columns": {"age": "age_at_visit"}}}, "'table.columns.age': column 'age_at_visit'"),
    ({"table": {"path": "meta.csv", "key": {"column": "rec"}}}, "'table.key.column': column 'rec'"),
    ({"table": {"path": "absent.csv", "key": {"column": "record"}}}, "'table.path': no file"),
    ({"window": {"length_s": -10}}, "'window': unknown field"),
    ({"records": "**/*.dat"}, "'records': expected a glob of .hea files"),
    ({"records": "../**/*.hea"}, "'records': must stay under the corpus folder"),
    ({"header_comments": "yes"}, "'header_comments': expected true or false"),
    ({"name": "Bad Name"}, "'name': expected lower-case"),
    ({"patient_id": {"column": "subject"}}, "'patient_id.column': a column needs a table"),
    ({"windows": {"length_s": -10}}, "'windows.length_s': must be > 0, got -10"),
    ({"windows": {"length_s": 10, "hop_s": 0}}, "'windows.hop_s': must be > 0, got 0"),
    ({"windows": {"length_s": 10, "start_s": -1}}, "'windows.start_s': must be >= 0, got -1"),
    ({"windows": {"length_s": 10, "remainder": "pad"}}, "'windows.remainder': expected one of"),
    ({"windows": {"length_s": 10, "max_windows": 0}}, "'windows.max_windows': expected a whole"),
    ({"windows": {"hop_s": 10}}, "'windows.length_s': missing"),
    ({"windows": {"length_s": 10, "overlap": 2}}, "'windows.overlap': unknown field"),
    ({"lead_aliases": {"MLII": "lead2"}}, "'lead_aliases.MLII': 'lead2' is not a standard lead"),
]


@pytest.mark.parametrize("change,message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_a_spec_mistake_is_refused_naming_the_field(change, message, tmp_path):
    corpus = _ludb_table(tmp_path)
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **change}, "bad.yaml", source=corpus)
    assert message in str(err.value) and str(err.value).startswith("bad.yaml: field ")


def test_the_ingest_job_refuses_a_bad_spec_in_one_line_before_ray(tmp_path):
    corpus = _ludb_table(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "record_id": {"regex": r"(\d+)"}}))
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "ingest.py"), "--corpus-spec",
                        str(bad), "--source", str(corpus), "--dest", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"ingest: error: --corpus-spec {bad}: field 'record_id.regex': has no named group "
        "(?P<record_id>...)"]
    assert not (tmp_path / "out").exists()
    # the project's own specs load cleanly
    for name in ("ludb", "cinc2021", "mitdb"):
        assert load_spec(REPO / "corpora" / f"{name}.yaml").name == name
