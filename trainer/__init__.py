"""The reference trainer: a tiny NumPy transformer that proves, end to end, that the shards teach what they should.

It reads the shards `lossmask prepare` writes, streams them into (B, T) batches, and trains a decoder-only
transformer whose every backward pass is written by hand (`layers.py`, `model.py`), with the masked mean
cross-entropy of the lesson (`loss.py`) and AdamW (`optim.py`). The tests use it to show that the loss falls,
that masked targets teach nothing, that no position sees the future and that packed documents never see each
other. NumPy only: nothing here imports torch.
"""
