"""`dedup: exact`: a record whose normalized messages equal an earlier record's is dropped (`duplicate`).

Workers compute each parsed record's digest (`record_digest`, in `batch.process_batch`); the job, which sees the
records in order, keeps the digests it has seen (`Deduplicator`) and drops a later record with a digest seen
before, within a dataset and across datasets (and from the eval part, which runs first, to train); the repeats
of one record that `sample` makes are not duplicates. Memory: per distinct record a 16-byte BLAKE2b digest and
an 8-byte hash of where it came from, about 130 bytes in a Python dict (measured: 127 MB for a million), never
the records.

Normalized means as parsed (`schemas.records`): whatever the input format and field names, the same messages
(role, content, reasoning, tool calls, name, tool call id) and tools give the same digest; the data's training
flags (`weight`) and the job's mask options do not count. A record that could not be parsed has no digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..schemas.records import Conversation, PromptCompletion, Record

DIGEST_BYTES = 16


def record_digest(record: Record) -> bytes:
    if isinstance(record, Conversation):
        data: object = ["chat", [m.to_template() for m in record.messages], record.tools]
    elif isinstance(record, PromptCompletion):
        data = ["prompt_completion", record.prompt, record.completion]
    else:
        data = ["text", record.text]
    encoded = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.blake2b(encoded, digest_size=DIGEST_BYTES).digest()


@dataclass
class Deduplicator:
    """The digests seen so far, each with where its first record came from: a record `sample` repeats (the same
    record of the same dataset, passed over again) is no duplicate of itself."""

    seen: dict[bytes, int] = field(default_factory=dict)

    def seen_before(self, digest: bytes | None, origin: str) -> bool:
        """Whether an earlier record from another `origin` (part, dataset, file:line) had this digest; remembers
        the first. No digest (the record could not be parsed): never a duplicate."""
        if digest is None:
            return False
        where = int.from_bytes(hashlib.blake2b(origin.encode("utf-8"), digest_size=8).digest(), "little")
        first = self.seen.setdefault(digest, where)
        return first != where
