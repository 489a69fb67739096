"""A tiny random Llama checkpoint with a real tokenizer (SmolLM2's, read from the GGUF the test setup installs),
built at test time: real transformers loading and generation in well under a second per case."""

from __future__ import annotations

from pathlib import Path

from tests.harness.llama_server import smollm2_gguf


def build_tiny_llama(directory: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """Writes `config.json`, `model.safetensors` and the tokenizer files (with SmolLM2's chat template) into
    `directory` and returns it. The weights are random: the text is gibberish, the machinery is real."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
