"""The data lossmask reads and writes, defined once: input records, token classes, reasons, shard columns."""
