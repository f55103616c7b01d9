"""Shared fixtures: tiny seeded random models built from configs, temporary stores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "What is 12 + 7? Think step by step. 12 + 7 = 19. Final answer: 19",
    "Tom has 3 apples and buys 5 more, so he has 8 apples. Wait, let me check: 3 + 5 = 8.",
    "However, maybe the answer is different. Hmm, alternatively we could subtract first.",
    "<think> So the total is 42. </think> The answer is 42.",
    "café naïve 東京 😀 <img src=x onerror=alert(1)> </script>",
] * 4


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in-process on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    return tok


def make_tiny_llama(tok, seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 100_000, f"tiny test model has {n_params} parameters: the config is not tiny"
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A LoadedModel around a 2-layer random Llama (under 100k parameters)."""
    from analysis.models import LoadedModel
    return LoadedModel(make_tiny_llama(tiny_tokenizer), tiny_tokenizer, "tiny-llama")


@pytest.fixture
def store(tmp_path):
    from analysis.store import Store
    return Store(tmp_path / "test.duckdb")


@pytest.fixture(scope="session")
def embedded_lm():
    """The real embedded SmolLM2-135M-Instruct (loaded once per test session)."""
    from analysis.models import load_model
    return load_model()
