"""Nothing lost: every malformed record is rejected with its file:line and a reason, and the counts add up."""

from __future__ import annotations

from lossmask.engines.tables import result_to_table, table_to_result
from lossmask.pipeline.accounting import Accounting
from lossmask.pipeline.batch import JobContext, process_batch
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.inputs import iter_raw_records

from .support import FIXTURE_TOKENIZER, FIXTURES, read_rejects, read_rows, run_prepare, write_jsonl

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


def test_rows_dropped_inside_a_written_record_travel_typed_and_are_counted_once(tmp_path):
    """`process_batch` hands the drops of a written record's rows over as reasons, not text; `Accounting.add`
    counts them, once; and the Arrow form the Ray engine moves keeps them."""
    record = {"prompt": " ".join(["word"] * 20), "completion": " end"}  # every window but the last trains nothing
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    config = PrepareConfig(inputs=[str(path)], tokenizer=str(FIXTURE_TOKENIZER), max_length=8, overflow="split")
    context = JobContext.from_config(config)
    result = process_batch(list(iter_raw_records([path], None, context.format_options)), context)
    (outcome,) = result.outcomes
    assert outcome.status == "written" and outcome.detail == ""
    assert len(outcome.rows_dropped) > 1 and set(outcome.rows_dropped) == {"no_trainable_tokens"}
    accounting = Accounting()
    accounting.add(outcome)
    assert accounting.rows_dropped == {"no_trainable_tokens": len(outcome.rows_dropped)}
    assert [o.rows_dropped for o in table_to_result(result_to_table(result)).outcomes] == [outcome.rows_dropped]
