"""A corpus of real LUDB records mixed with damaged copies of them: every bad record is
quarantined with the right reason code, lead-level problems are stored masked and flagged,
and nothing raises."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from clef_model.leads import LEADS
from clef_platform.ingest.adapters import get_adapter
from clef_platform.ingest.canonical import process_record
from clef_platform.ingest.record import CanonicalRecord, Quarantined
from clef_platform.ingest.validate import REASONS

REPO = Path(__file__).resolve().parents[1]
LUDB = REPO / "data" / "ludb" / "data"
N_LEADS_LUDB = 12
LUDB_ORDER = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]


def copy_record(src: str, dst_dir: Path, name: str) -> Path:
    """A copy of LUDB record `src` named `name` (header's file names rewritten)."""
    text = (LUDB / f"{src}.hea").read_text()
    text = re.sub(rf"^{src} ", f"{name} ", text, count=1)
    text = re.sub(rf"^{src}\.dat ", f"{name}.dat ", text, flags=re.M)
    (dst_dir / f"{name}.hea").write_text(text)
    shutil.copy(LUDB / f"{src}.dat", dst_dir / f"{name}.dat")
    return dst_dir / name


def edit_header(rec: Path, fn) -> None:
    hea = rec.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(fn(lines)) + "\n")


def edit_samples(rec: Path, fn) -> None:
    dat = rec.with_suffix(".dat")
    x = np.fromfile(dat, dtype="<i2").reshape(-1, N_LEADS_LUDB)
    fn(x)
    x.astype("<i2").tofile(dat)


def set_field(lines, line_no, field_no, value):
    tok = lines[line_no].split(" ")
    tok[field_no] = value
    lines[line_no] = " ".join(tok)
    return lines


# name -> expected reason (record level)
BAD = {
    "garbled_bytes": "garbled_header",
    "garbled_fs": "garbled_header",
    "garbled_count": "garbled_header",
    "no_dat": "missing_signal_file",
    "truncated": "truncated_signal_file",
    "length_mismatch": "header_length_mismatch",
    "fs_zero": "invalid_sampling_rate",
    "duplicate_leads": "duplicate_lead_names",
    "duplicate_case": "duplicate_lead_names",
    "gain_zero": "absurd_header_value",
    "gain_negative": "absurd_header_value",
    "age_absurd": "absurd_header_value",
    "five_seconds": "too_short",
    "all_flat": "no_usable_lead",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    for n in ("1", "2", "3"):
        copy_record(n, d, f"good{n}")

    (d / "garbled_bytes.hea").write_bytes(b"\x00\xff\xfe garbage \x01\x02\n\x89PNG\r\n")
    shutil.copy(LUDB / "4.dat", d / "garbled_bytes.dat")
    # wfdb alone would read this as 250 Hz: the strict parser must not
    edit_header(copy_record("4", d, "garbled_fs"), lambda L: set_field(L, 0, 2, "abc"))
    edit_header(copy_record("4", d, "garbled_count"), lambda L: L[:11] + L[13:])   # 2 signal lines lost
    (copy_record("5", d, "no_dat").with_suffix(".dat")).unlink()
    trunc = copy_record("6", d, "truncated").with_suffix(".dat")
    trunc.write_bytes(trunc.read_bytes()[:60001])                          # mid-frame
    edit_header(copy_record("7", d, "length_mismatch"), lambda L: set_field(L, 0, 3, "6000"))
    edit_header(copy_record("8", d, "fs_zero"), lambda L: set_field(L, 0, 2, "0"))
    edit_header(copy_record("9", d, "duplicate_leads"),
                lambda L: [ln.replace(" avl", " avr") if ln.endswith(" avl") else ln for ln in L])
    edit_header(copy_record("9", d, "duplicate_case"),
                lambda L: [ln[:-2] + "I" if ln.endswith(" ii") else ln for ln in L])
    edit_header(copy_record("10", d, "gain_zero"),
                lambda L: set_field(L, 3, 2, re.sub(r"^[\d.]+", "0", L[3].split(" ")[2])))
    edit_header(copy_record("10", d, "gain_negative"),
                lambda L: set_field(L, 3, 2, "-" + L[3].split(" ")[2]))
    edit_header(copy_record("11", d, "age_absurd"),
                lambda L: [re.sub(r"^#<age>: .*", "#<age>: 250", ln) for ln in L])
    # a real 5 s record: the first half of LUDB 12, written with wfdb
    src = wfdb.rdrecord(str(LUDB / "12"), physical=False)
    wfdb.wrsamp("five_seconds", fs=500, units=src.units, sig_name=src.sig_name,
                d_signal=src.d_signal[:2500], fmt=src.fmt, adc_gain=src.adc_gain,
                baseline=src.baseline, write_dir=str(d))

    def flatten_all(x):
        x[:] = x[0]
    edit_samples(copy_record("13", d, "all_flat"), flatten_all)

    # lead-level problems, kept and masked
    def flat_v3(x):
        x[:, LUDB_ORDER.index("v3")] = 17
    edit_samples(copy_record("14", d, "flat_lead"), flat_v3)

    def saturate_ii(x):
        x[: x.shape[0] // 3, LUDB_ORDER.index("ii")] = 32767
    edit_samples(copy_record("15", d, "saturated_lead"), saturate_ii)
    edit_header(copy_record("16", d, "nonstandard_lead"),
                lambda L: [ln[:-3] + " v4r" if ln.endswith(" v4") else ln for ln in L])

    def invalid_some_and_all(x):
        x[100:110, LUDB_ORDER.index("i")] = -32768      # a few invalid samples: kept
        x[:, LUDB_ORDER.index("avf")] = -32768           # a lead all invalid: masked
    edit_samples(copy_record("17", d, "invalid_samples"), invalid_some_and_all)
    return d


@pytest.fixture(scope="module")
def outcomes(corpus):
    refs = list(get_adapter("wfdb", corpus="damaged").list_records(corpus))
    return {r.record_id: process_record(r) for r in refs}


def test_balance_nothing_dropped_nothing_raised(outcomes):
    stored = [o for o in outcomes.values() if isinstance(o, CanonicalRecord)]
    quarantined = [o for o in outcomes.values() if isinstance(o, Quarantined)]
    assert len(outcomes) == 3 + len(BAD) + 4
    assert len(stored) + len(quarantined) == len(outcomes)
    assert len(quarantined) == len(BAD)


@pytest.mark.parametrize("name,reason", sorted(BAD.items()))
def test_damaged_record_quarantined_with_reason(outcomes, name, reason):
    q = outcomes[name]
    assert isinstance(q, Quarantined), (name, q)
    assert q.reason == reason, (name, q.reason, q.detail)
    assert q.reason in REASONS
    assert name in q.detail          # the detail names the file a person has to fix


def test_quarantine_details_are_actionable(outcomes):
    assert "does not exist" in outcomes["no_dat"].detail and ".dat" in outcomes["no_dat"].detail
    assert "mid-frame" in outcomes["truncated"].detail
    assert "6000" in outcomes["length_mismatch"].detail
    assert "'abc'" in outcomes["garbled_fs"].detail
    assert "'avr'" in outcomes["duplicate_leads"].detail
    assert "age 250" in outcomes["age_absurd"].detail
    assert "gain" in outcomes["gain_zero"].detail and "'iii'" in outcomes["gain_zero"].detail
    assert "5.00 s" in outcomes["five_seconds"].detail
    assert "flat" in outcomes["all_flat"].detail


def test_good_copies_stored_clean(outcomes):
    for n in ("1", "2", "3"):
        rec = outcomes[f"good{n}"]
        assert isinstance(rec, CanonicalRecord)
        assert rec.lead_mask.all() and rec.quality_flags == {}


def _mask_of(rec):
    return {lead for lead, ok in zip(LEADS, rec.lead_mask) if not ok}


def test_flat_lead_masked_and_flagged(outcomes):
    rec = outcomes["flat_lead"]
    assert isinstance(rec, CanonicalRecord)
    assert _mask_of(rec) == {"V3"} and rec.quality_flags == {"V3": ["flat"]}
    assert (rec.digital[LEADS.index("V3")] == 17).all()          # samples kept as they were


def test_saturated_lead_masked_and_flagged(outcomes):
    rec = outcomes["saturated_lead"]
    assert isinstance(rec, CanonicalRecord)
    assert _mask_of(rec) == {"II"} and rec.quality_flags == {"II": ["saturated"]}


def test_nonstandard_lead_name_leaves_that_lead_absent(outcomes):
    rec = outcomes["nonstandard_lead"]
    assert isinstance(rec, CanonicalRecord)
    assert _mask_of(rec) == {"V4"}
    assert rec.quality_flags == {"V4": ["absent"], "record": ["non_standard_lead:v4r"]}
    assert (rec.digital[LEADS.index("V4")] == 0).all()
    # the other leads are untouched
    src = wfdb.rdrecord(str(LUDB / "16"))
    mv = rec.millivolts()
    for c, name in enumerate(LUDB_ORDER):
        if name != "v4":
            assert np.abs(mv[c] - src.p_signal[:, c]).max() <= 0.5 / src.adc_gain[c] + 1e-5


def test_invalid_samples_zeroed_and_all_invalid_lead_masked(outcomes):
    rec = outcomes["invalid_samples"]
    assert isinstance(rec, CanonicalRecord)
    assert _mask_of(rec) == {"aVF"}
    assert rec.quality_flags == {"I": ["invalid_samples"], "aVF": ["all_invalid"]}
    mv = rec.millivolts()
    assert (mv[0, 100:110] == 0).all() and np.isfinite(mv).all()
    src = wfdb.rdrecord(str(LUDB / "17"))
    assert np.abs(mv[0, :100] - src.p_signal[:100, 0]).max() <= 0.5 / src.adc_gain[0] + 1e-5


def test_every_reason_is_documented():
    doc = (REPO / "docs" / "ingestion.md").read_text()
    for code in REASONS:
        assert f"`{code}`" in doc, code


EDGE = Path("/work/shared/data/wfdb-edge-cases")


@pytest.mark.skipif(not EDGE.is_dir(), reason="shared WFDB edge cases not available")
def test_real_wfdb_edge_cases_never_raise_and_keep_their_leads():
    # the edge cases repeat record names in sub-folders (v102s): ids from the relative path
    refs = list(get_adapter("wfdb", corpus="edge", record_id="relative_path").list_records(EDGE))
    out = {r.record_id: process_record(r) for r in refs}
    assert len(out) == len(refs) > 50
    assert not [o for o in out.values() if isinstance(o, Quarantined) and o.reason == "read_error"]
    # PTB Diagnostic s0010_re: 1000 Hz, 12 leads + Frank vx, vy, vz
    s = out["s0010_re"]
    assert isinstance(s, CanonicalRecord) and s.lead_mask.all()
    assert s.digital.shape == (12, 19200) and s.fs_original == 1000.0
    assert s.quality_flags == {"record": ["non_standard_lead:vx", "non_standard_lead:vy",
                                          "non_standard_lead:vz", "resampled_from_1000Hz"]}
    w = wfdb.rdrecord(str(EDGE / "s0010_re"))
    from scipy.signal import resample_poly

    ref_mv = resample_poly(w.p_signal[:, 0], 1, 2)           # same filter, in float
    assert np.abs(s.millivolts()[0] - ref_mv).max() <= 0.5 / 2000 + 1e-6   # one re-quantisation
    assert np.corrcoef(s.millivolts()[0], w.p_signal[::2, 0])[0, 1] > 0.99
    # base times with a one-digit hour are valid WFDB, not garbled
    q = out["multi-segment__041s__041s01"]
    assert isinstance(q, Quarantined) and q.reason == "too_short"    # 1000 frames at 125 Hz
    assert out["wave_4"].reason != "garbled_header"
    assert out["multi-segment__041s__041s"].reason == "unsupported_format"                # multi-segment master
