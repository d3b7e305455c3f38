"""The records and outcomes that cross between the main process and its workers pickle by their fields
(`__reduce__`): every field must survive the round trip, including one added later."""

import dataclasses
import pickle

from lossmask.pipeline.accounting import Outcome
from lossmask.schemas.records import RawRecord, SourceRef


def test_every_field_survives_pickling():
    source = SourceRef("data/a.jsonl", 7, index=41, item=2)
    record = RawRecord(source, {"messages": []}, b'{"messages": []}', "bad_json", "detail", {"format": "openai"})
    outcome = Outcome(source, "rejected", 3, "too_long", "why", "messages", ("x",), 1, b"digest")
    for value in (source, record, outcome):
        copy = pickle.loads(pickle.dumps(value))
        assert copy == value and type(copy) is type(value)
        for f in dataclasses.fields(value):  # no field left at its default: a field __reduce__ forgot would show
            assert getattr(copy, f.name) == getattr(value, f.name)
            if f.default is not dataclasses.MISSING:
                assert getattr(value, f.name) != f.default, f.name
