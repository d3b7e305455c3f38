"""Every layout a shard folder may have, with its schema and the schema version this code writes and reads.

One table for the writer (`jobs.prepare` picks the schema of the job's layout, `PrepareConfig.layout`) and for
every reader (`loader.shards.ShardSet` checks a folder against it): the SFT rows and packed layouts of
`schemas.shards`, the preference pairs and KTO layouts of `schemas.preference`, each versioned on its own.
"""

from __future__ import annotations

import pyarrow as pa

from . import preference
from .shards import LAYOUT_PACKED, LAYOUT_ROWS, PACKED_SHARD_SCHEMA, SCHEMA_VERSION, SHARD_SCHEMA

LAYOUTS: dict[str, tuple[pa.Schema, int]] = {
    LAYOUT_ROWS: (SHARD_SCHEMA, SCHEMA_VERSION),
    LAYOUT_PACKED: (PACKED_SHARD_SCHEMA, SCHEMA_VERSION),
    preference.LAYOUT_PAIRS: (preference.PAIR_SHARD_SCHEMA, preference.SCHEMA_VERSION),
    preference.LAYOUT_KTO: (preference.KTO_SHARD_SCHEMA, preference.SCHEMA_VERSION),
}


def layout_of_names(names: list[str]) -> str:
    """The layout whose columns are exactly `names`, in order (for data that carries columns but no metadata)."""
    for layout, (schema, _) in LAYOUTS.items():
        if schema.names == list(names):
            return layout
    raise ValueError(f"no layout has the columns {names}")
