"""A tiny Llama with random weights for the snippet tests: enough for a trainer to take real steps on CPU in a
second, never a model worth its output. Imported by the tests that need torch and transformers (which skip
before importing this module when those are absent)."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_tiny_llama(folder: Path, tokenizer: Path) -> Path:
    """Save a 2-layer Llama (seeded, so every run starts from the same weights) and `tokenizer`'s files into
    `folder`, as a model folder `from_pretrained` loads."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer / name, folder / name)
    return folder
