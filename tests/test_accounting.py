"""Nothing lost: every malformed record is rejected with its file:line and a reason, and the counts add up."""

from __future__ import annotations

from .conftest import FIXTURES, read_rejects, read_rows, run_prepare

MALFORMED = FIXTURES / "bad" / "malformed.jsonl"

EXPECTED_REJECTS = {
    2: "invalid_json",
    3: "missing_field",
    4: "unknown_role",
    5: "empty_conversation",
    6: "no_assistant_turn",
    7: "wrong_type",
    8: "not_an_object",
    9: "missing_field",
}


def test_every_bad_line_is_rejected_with_its_line_and_reason(tmp_path):
    manifest, out = run_prepare(tmp_path, [MALFORMED])
    records = manifest["records"]
    assert records["read"] == records["written"] + records["rejected"] + records["dropped"]
    assert (records["read"], records["written"], records["rejected"]) == (11, 3, 8)  # line 10 is blank
    rejects = read_rejects(out)
    assert {int(r["source"].rsplit(":", 1)[1]): r["reason"] for r in rejects} == EXPECTED_REJECTS
    assert all(r["source"].startswith(str(MALFORMED)) and r["hint"] and r["status"] == "rejected" for r in rejects)
    assert sum(records["by_reason"]["rejected"].values()) == 8
    assert [r["source"].rsplit(":", 1)[1] for r in read_rows(out)] == ["1", "11", "12"]


def test_reject_details_name_the_field(tmp_path):
    _, out = run_prepare(tmp_path, [MALFORMED])
    by_line = {int(r["source"].rsplit(":", 1)[1]): r for r in read_rejects(out)}
    assert by_line[3]["field"] == "messages[0].content"
    assert by_line[4]["field"] == "messages[0].role" and "wizard" in by_line[4]["detail"]
    assert by_line[7]["field"] == "messages[0].content"


def test_manifest_shard_totals_match_the_shards(tmp_path):
    manifest, out = run_prepare(tmp_path, [FIXTURES / "data" / "openai.jsonl"], shard_max_rows=100)
    rows = read_rows(out)
    assert len(manifest["shards"]) == 5
    assert manifest["totals"]["rows"] == len(rows) == sum(s["rows"] for s in manifest["shards"])
    assert manifest["totals"]["loss_tokens"] == sum(r["num_loss_tokens"] for r in rows)
    assert manifest["totals"]["tokens"] == sum(r["num_tokens"] for r in rows)
    assert manifest["records"]["rows"] == len(rows)
