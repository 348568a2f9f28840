"""Job records read back from disk: every wrong shape of every field is set aside, the service's
store still loads the good ones, and every reply about every record encodes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stabledreamer.server import views
from stabledreamer.server.jobs import JobRecord, JobStore
from stabledreamer.server.records import RecordError, parse_record
from stabledreamer_protocol import Jobs, encode

GOOD = JobRecord(job="good", seq=1, digest="d", kind="demo", preset="smoke", seed=1).to_dict()
DONE = {
    **GOOD,
    "state": "done",
    "result": {
        "files": [{"name": "gaussians.ply", "size": 3, "sha256": "a" * 64, "media_type": "x/y"}],
        "chunk_size": 1 << 20,
        "metrics": {"psnr": 30.0},
    },
}
WRONG_VALUES = [None, [], [1], "", "x", -1, 2**64, 1.5, float("inf"), True, {}, {"a": 1}]
"""One value of every JSON kind (and out-of-range numbers): each is wrong for most fields."""


def valid(field: str, value) -> bool:
    """Whether ``value`` is acceptable for ``field`` (the rule the reader must implement)."""
    declared = {f.name: f.type for f in dataclasses.fields(JobRecord)}[field]
    if value is None:
        return declared.endswith("| None") and not (field == "result" and GOOD["state"] == "done")
    base = declared.removesuffix("| None").strip()
    if base == "str":
        if not isinstance(value, str):
            return False
        rules = {
            "job": False,  # changing the id breaks the folder match
            "kind": value in ("reconstruct", "demo", "generate"),
            "state": value in ("queued", "running", "done", "failed", "cancelled"),
            "target_file": value in ("", "x"),
            "init_file": value in ("", "x"),
            "parent": value == "",  # a parent goes with a mode (and the other way round)
            "mode": value == "",
        }
        return rules.get(field, True)
    if base == "int":
        return type(value) is int and 0 <= value < 2**63
    if base == "float":
        return type(value) in (int, float) and 0 <= value < float("inf")
    if base.startswith("dict"):
        return isinstance(value, dict) and field != "result"
    if base == "bool":
        return type(value) is bool
    raise AssertionError(declared)


CASES = [
    (f, v)
    for f in GOOD
    for v in WRONG_VALUES
    if not valid(f, v) and not (f == "result" and v is None)
]


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_every_wrong_field_is_refused(field, value):
    with pytest.raises(RecordError) as e:
        parse_record({**GOOD, field: value}, "good")
    assert f"'{field}" in str(e.value) or "reply" in str(e.value) or "done" in str(e.value)


@pytest.mark.parametrize(
    "field", [f for f in GOOD if f not in ("job", "seq", "digest", "kind", "preset", "seed")]
)
def test_missing_optional_fields_take_defaults(field):
    data = dict(GOOD)
    del data[field]
    assert parse_record(data, "good").job == "good"


@pytest.mark.parametrize("field", ["job", "seq", "digest", "kind", "preset", "seed"])
def test_missing_required_fields(field):
    data = dict(GOOD)
    del data[field]
    with pytest.raises(RecordError):
        parse_record(data, "good")


BAD_RESULTS = [
    {"files": "x"},
    {"files": [1]},
    {"files": [{"name": "a"}]},
    {"files": [{**DONE["result"]["files"][0], "name": "../../etc/passwd"}]},
    {"files": [{**DONE["result"]["files"][0], "size": -1}]},
    {"files": [{**DONE["result"]["files"][0], "sha256": "zz"}]},
    {"files": [{**DONE["result"]["files"][0], "media_type": 5}]},
    {"files": [], "chunk_size": 0},
    {"files": [], "chunk_size": "1"},
    {"files": [], "metrics": []},
]


@pytest.mark.parametrize("result", BAD_RESULTS)
def test_bad_results_are_refused(result):
    with pytest.raises(RecordError):
        parse_record({**DONE, "result": result}, "good")


@pytest.mark.parametrize(
    "text",
    ["[]", '"a string"', "null", "3", "{", "", '{"job": "good"}', "\x00\xff", "[" * 100_000],
)
def test_store_sets_aside_bad_files_and_serves_the_rest(tmp_path, text):
    store = JobStore(tmp_path)
    ok = JobRecord(job="ok", seq=store.next_seq(), digest="d", kind="demo", preset="smoke", seed=1)
    store.create(ok, {})
    bad = store.root / "j-bad"
    bad.mkdir()
    (bad / "job.json").write_bytes(
        text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    )
    again = JobStore(tmp_path)
    again.load()
    assert again.get("ok").state == "queued"
    failed = again.get("bad")
    assert failed.state == "failed" and "set aside" in failed.message
    assert (bad / "job.json.bad").is_file()
    # The placeholder is a good record: the next start reads it as it is.
    third = JobStore(tmp_path)
    third.load()
    assert third.get("bad").state == "failed"
    encode(Jobs(jobs=[views.job_info(r) for r in third.records.values()]))


def test_text_that_cannot_be_encoded_is_repaired():
    rec = parse_record({**GOOD, "prompt": "tea\ud800pot", "target_name": "\udfff" * 3}, "good")
    assert rec.prompt == "tea\ufffdpot"
    encode(Jobs(jobs=[views.job_info(rec)]))
    encode(views.job_state(rec, 0))


def test_every_state_and_kind_encodes():
    for state in ("queued", "running", "done", "failed", "cancelled"):
        for kind in ("reconstruct", "demo", "generate"):
            data = {**DONE, "state": state, "kind": kind, "prompt": "\U0001f600" * 2000}
            rec = parse_record(data, "good")
            encode(Jobs(jobs=[views.job_info(rec)]))
            encode(views.job_state(rec, 0))
            encode(views.result(rec))


def test_a_folder_that_is_not_a_job_id(tmp_path):
    store = JobStore(tmp_path)
    bad = store.root / "j-has space"
    bad.mkdir()
    (bad / "job.json").write_text(json.dumps({**GOOD, "job": "has space"}))
    store.load()
    assert store.records == {} and (bad / "job.json.bad").is_file()


def test_a_follow_up_record_needs_a_parent_and_a_mode():
    rec = parse_record({**GOOD, "kind": "generate", "parent": "p-1", "mode": "refine"}, "good")
    assert (rec.parent, rec.mode) == ("p-1", "refine")
    with pytest.raises(RecordError, match="not refine or continue"):
        parse_record({**GOOD, "parent": "p-1", "mode": "remix"}, "good")
    with pytest.raises(RecordError, match="not a job id"):
        parse_record({**GOOD, "parent": "../p", "mode": "refine"}, "good")
