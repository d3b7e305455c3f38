"""The audit's parts on small hand-made inputs: statistics, token scans, token texts, row selection."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from audit_testkit import TOKENIZER, realworld
from lossmask.audit.report import spread
from lossmask.audit.stats import compute_stats, nice_width
from lossmask.audit.tokenscan import scan_batch, tally_batch, whitespace_table
from lossmask.audit.views import token_texts
from lossmask.pipeline.shift import Row, rows_to_batch
from lossmask.pipeline.tokenizer import load_tokenizer
from lossmask.schemas.classes import TokenClass as C
from lossmask.schemas.shards import RowFlag


def row(classes: list[int], counted: list[int], targets: list[int] | None = None, flags: int = 0) -> Row:
    """A row given per target: class, counted flag and (optionally) target id."""
    n = len(classes)
    targets = targets if targets is not None else list(range(10, 10 + n))
    return Row(
        input_ids=np.asarray([1, *targets[:-1]], dtype=np.int32),
        target_ids=np.asarray(targets, dtype=np.int32),
        loss_mask=np.asarray(counted, dtype=np.uint8),
        token_class=np.asarray(classes, dtype=np.uint8),
        source="unit:1",
        record_index=0,
        part=0,
        flags=flags,
    )


def test_nice_width_and_spread() -> None:
    assert [nice_width(m) for m in (0, 23, 99, 243, 4095)] == [1, 1, 5, 20, 200]
    assert spread(652, 3) == [0, 326, 651]
    assert spread(2, 5) == [0, 1]
    assert spread(0, 3) == [] and spread(10, 0) == [] and spread(10, 1) == [0]


def test_statistics_on_known_rows() -> None:
    rows = [
        row([C.USER, C.USER, C.ASSISTANT, C.END_OF_TURN], [0, 0, 1, 1]),
        row([C.TEXT] * 10, [1] * 10, flags=int(RowFlag.TRUNCATED)),
        row([C.SYSTEM, C.ASSISTANT], [0, 1], flags=int(RowFlag.TRUNCATED | RowFlag.STRADDLE)),
    ]
    frame = pl.from_arrow(pa.Table.from_batches([rows_to_batch(rows)])).lazy()  # type: ignore[union-attr]
    stats = compute_stats(frame)
    assert (stats.rows, stats.positions, stats.counted) == (3, 16, 13)
    assert stats.length == {"min": 2, "mean": 5.33, "p50": 4, "p90": 10, "p99": 10, "max": 10}
    assert stats.row_flags == {"truncated": 2, "straddle": 1}
    by_class = {c.label: (c.positions, c.counted) for c in stats.classes}
    assert by_class == {"system": (1, 0), "user": (2, 0), "assistant": (2, 2), "end_of_turn": (1, 1), "text": (10, 10)}
    by_role = {r.role: (r.positions, r.counted) for r in stats.roles}
    assert by_role == {"system": (1, 0), "user": (2, 0), "assistant": (3, 3), "text": (10, 10)}
    assert sum(stats.length_histogram.counts) == 3 and stats.length_histogram.edges[:2] == [0.0, 1.0]
    # counted fraction: 0.5, 1.0 (last bin) and 0.5
    assert stats.fraction_histogram.counts[10] == 2 and stats.fraction_histogram.counts[19] == 1


def scan_rows(*rows: Row, whitespace: np.ndarray | None = None) -> dict[str, list[int]]:
    return {rule: first.tolist() for rule, first in scan_batch(rows_to_batch(list(rows)), whitespace).items()}


def test_token_scan_rules() -> None:
    H, U, A, R, E, T = C.ROLE_HEADER, C.USER, C.ASSISTANT, C.REASONING, C.END_OF_TURN, C.TEMPLATE
    result = scan_rows(
        row([H, U, H, A, A, E, T], [0, 0, 0, 1, 1, 1, 0]),  # 0: clean turn
        row([H, U, H, A, E, T, H, A, E], [0, 0, 0, 0, 0, 0, 0, 1, 1]),  # 1: an untrained turn, then a trained one
        row([H, U, H, A, E, T], [0, 0, 0, 1, 0, 0]),  # 2: end-of-turn not counted
        row([H, U, H, A, A, H, U], [0, 0, 0, 1, 1, 0, 0]),  # 3: answer followed by the next header
        row([H, U, H, A, A], [0, 0, 0, 1, 1], flags=int(RowFlag.TRUNCATED)),  # 4: cut at the end: not "missing"
        row([H, U, H, A, A], [0, 0, 0, 1, 1]),  # 5: ends after the answer, not truncated: missing
        row([H, U, H, E, T], [0, 0, 0, 1, 0]),  # 6: counted end-of-turn right after the header
        row([H, R, R, A, E], [0, 0, 1, 1, 1]),  # 7: untrained reasoning start, trained rest: clean
    )
    assert result == {
        "eot_not_counted": [-1, -1, 4, -1, -1, -1, -1, -1],
        "eot_missing": [-1, -1, -1, 4, -1, 4, -1, -1],
        "empty_assistant": [-1, -1, -1, -1, -1, -1, 3, -1],
    }


def test_a_turn_whose_tool_call_is_left_untrained_still_ends_and_is_not_empty() -> None:
    """--no-train-tool-calls: the call is content the model reads, not a missing end-of-turn or an empty answer;
    a turn that really is empty or unended still fires."""
    H, U, R, K, A, E = C.ROLE_HEADER, C.USER, C.REASONING, C.TOOL_CALL, C.ASSISTANT, C.END_OF_TURN
    whitespace = np.zeros(64, dtype=bool)
    whitespace[20] = True  # id 20 decodes to a space
    result = scan_rows(
        row([H, U, H, R, K, K, E], [0, 0, 0, 1, 0, 0, 1]),  # 0: trained reasoning, untrained call, stop
        row([H, U, H, K, K, E], [0, 0, 0, 0, 0, 1]),  # 1: untrained call alone, stop
        row([H, U, H, K, A, E], [0, 0, 0, 0, 1, 1], targets=[30, 31, 32, 33, 20, 40]),  # 2: call, then a space
        row([H, U, H, R, K, H, U], [0, 0, 0, 1, 0, 0, 0]),  # 3: no end-of-turn after the turn
        row([H, U, H, A, E], [0, 0, 0, 0, 1], targets=[30, 31, 32, 20, 40]),  # 4: an untrained space, stop
        whitespace=whitespace,
    )
    assert result == {
        "eot_not_counted": [-1, -1, -1, -1, -1],
        "eot_missing": [-1, -1, -1, 4, -1],
        "empty_assistant": [-1, -1, -1, -1, 4],
    }


def test_rows_without_assistant_content_scan_clean() -> None:
    assert scan_rows(row([C.TEXT] * 4, [1] * 4), row([C.USER, C.END_OF_TURN], [0, 0])) == {
        rule: [-1, -1] for rule in ("eot_not_counted", "eot_missing", "empty_assistant")
    }


def test_reasoning_tally_per_row() -> None:
    H, R, A, E = C.ROLE_HEADER, C.REASONING, C.ASSISTANT, C.END_OF_TURN
    batch = rows_to_batch(
        [
            row([H, R, R, A, E], [0, 1, 1, 1, 1]),  # trained reasoning
            row([H, A, E], [0, 1, 1]),  # none
            row([H, R, A, R, R, E], [0, 0, 1, 1, 0, 1]),  # read at 1 and 4, trained at 3
        ]
    )
    tally = tally_batch(batch, C.REASONING)
    assert tally.context.tolist() == [0, 0, 2]
    assert tally.counted.tolist() == [2, 0, 1]
    assert tally.first_context.tolist() == [-1, -1, 1]


def test_whitespace_only_answers_count_as_empty() -> None:
    H, U, A, E = C.ROLE_HEADER, C.USER, C.ASSISTANT, C.END_OF_TURN
    whitespace = np.zeros(64, dtype=bool)
    whitespace[[20, 21]] = True  # ids 20 and 21 decode to spaces
    spaces = row([H, U, A, A, E], [0, 0, 1, 1, 1], targets=[30, 31, 20, 21, 40])
    words = row([H, U, A, A, E], [0, 0, 1, 1, 1], targets=[30, 31, 20, 22, 40])
    assert scan_rows(spaces, words, whitespace=whitespace)["empty_assistant"] == [4, -1]
    assert scan_rows(spaces, words, whitespace=None)["empty_assistant"] == [-1, -1]  # without a tokenizer: unknown


def test_whitespace_table_of_the_fixture_tokenizer() -> None:
    info = load_tokenizer(TOKENIZER)
    table = whitespace_table(info.tokenizer)
    assert table.size == info.vocab_size
    space, newline, word = (info.tokenizer.token_to_id(t) for t in ("Ġ", "Ċ", "The"))
    assert table[space] and table[newline] and not table[word]


@pytest.mark.parametrize("text", ["Hello 😀 wörld, 你好!\n\n  indented", "<|im_start|>user\nHi<|im_end|>\n"])
def test_token_texts_reassemble_the_text_byte_level(text: str) -> None:
    info = load_tokenizer(TOKENIZER)
    ids = info.tokenizer.encode(text, add_special_tokens=False).ids
    texts = token_texts(info, ids)
    assert "".join(texts) == info.tokenizer.decode(ids, skip_special_tokens=False) == text
    if "😀" in text:
        assert "" in texts  # a token holding only the first bytes of a character shows nothing; the next shows it


def test_token_texts_keep_sentencepiece_spaces() -> None:
    info = load_tokenizer(str(realworld("tokenizers", "mistral-v3")))
    text = "[INST] What is the capital of France? [/INST] The capital is Paris.</s>"
    ids = info.tokenizer.encode(text, add_special_tokens=False).ids
    texts = token_texts(info, ids)
    assert "".join(texts) == info.tokenizer.decode(ids, skip_special_tokens=False)
    assert " capital" in texts  # decoding "▁capital" alone would drop its space


def test_token_texts_without_a_tokenizer_show_ids() -> None:
    assert token_texts(None, [5, 17]) == ["⟨5⟩", "⟨17⟩"]


def test_chart_axes_are_round_and_cover_the_data() -> None:
    from lossmask.audit.charts import _axis

    for maximum in (0, 1, 3, 7, 62, 222, 999, 1000, 4001, 123_456):
        top, step = _axis(maximum)
        assert top >= maximum and top % step == 0 and top // step <= 4
        assert str(step).rstrip("0") in ("1", "2", "5")
