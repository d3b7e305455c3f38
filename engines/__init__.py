"""Engines run the stages; they never change what the stages compute.

`local` (default) streams batches through a pool of worker processes on one machine; `ray` runs the same
`process_batch` through Ray Data on a cluster. Same inputs and config -> the same rows in the same order, so the
shards are byte-identical whatever the engine or the number of workers.
"""
