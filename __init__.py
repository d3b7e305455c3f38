"""lossmask: chat transcripts and raw text -> training-ready token shards with verified loss masks.

The data flows read -> parse -> render -> tokenize -> mask -> fit -> shift -> write; each stage is a
module of `lossmask.pipeline`, and the record and shard layouts live in `lossmask.schemas`.
"""

__version__ = "0.1.0"
