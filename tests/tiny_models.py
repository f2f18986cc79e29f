"""Tiny random-weight models of real architectures, each with a tokenizer trained here, saved as model folders.

The capture tests load these folders through att-report's own loader (`--model FOLDER`), so the real loading path
runs offline. Weights are drawn with a large initializer range so that attention is far from uniform: a recording
that mixed up heads, layers or positions could not pass for the model's own `output_attentions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GemmaConfig,
    GemmaForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A bug report names the prompt, the model and the output it did not expect.",
    "Attention weights show which earlier tokens each token looked at.",
    "She said: the café serves naïve crème brûlée on Sundays.",
    "Numbers like 12, 345 and 6789 appear in logs; so do paths like /tmp/x.",
    "def forward(self, x): return self.head(x) + 1",
]
VOCAB_SIZE = 300
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CONTEXT_LENGTH = 64  # small, so a test can ask for more tokens than a tiny model accepts
WINDOW = 4  # a sliding window shorter than every test prompt
INIT_RANGE = 0.3  # large enough that random attention is sharply non-uniform
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


@dataclass(frozen=True)
class TinyKind:
    """One architecture: how to configure it, its model class, and whether its tokenizer has a chat template."""

    make_config: Callable[[int], PretrainedConfig]
    model_class: type[PreTrainedModel]
    causal: bool = True
    chat: bool = False


def _special_ids(specials: dict[str, int]) -> dict[str, int]:
    return {"bos_token_id": specials[BOS], "eos_token_id": specials[EOS], "pad_token_id": specials[PAD]}


def _rope_decoder(config_class: type[PretrainedConfig], **extra: Any) -> Callable[[int], PretrainedConfig]:
    def make(vocab: int) -> PretrainedConfig:
        return config_class(vocab_size=vocab, max_position_embeddings=CONTEXT_LENGTH, initializer_range=INIT_RANGE,
                            head_dim=8, **SHAPE, **DECODER_SPECIALS, **extra)

    return make


# The BPE trainer puts the special tokens first, in this order.
DECODER_SPECIALS = _special_ids({BOS: 0, EOS: 1, PAD: 2})

TINY_KINDS: dict[str, TinyKind] = {
    "gpt2": TinyKind(
        lambda vocab: GPT2Config(vocab_size=vocab, n_positions=CONTEXT_LENGTH, n_embd=32, n_layer=2, n_head=4,
                                 initializer_range=INIT_RANGE, **DECODER_SPECIALS),
        GPT2LMHeadModel,
    ),
    "llama-gqa": TinyKind(_rope_decoder(LlamaConfig, num_key_value_heads=2), LlamaForCausalLM),
    "qwen2": TinyKind(_rope_decoder(Qwen2Config, num_key_value_heads=2), Qwen2ForCausalLM, chat=True),
    "mistral": TinyKind(_rope_decoder(MistralConfig, num_key_value_heads=1, sliding_window=None), MistralForCausalLM),
    "gpt-neox": TinyKind(
        lambda vocab: GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=CONTEXT_LENGTH,
                                    initializer_range=INIT_RANGE, **SHAPE, **DECODER_SPECIALS),
        GPTNeoXForCausalLM,
    ),
    "phi3": TinyKind(
        lambda vocab: Phi3Config(vocab_size=vocab, max_position_embeddings=CONTEXT_LENGTH,
                                 original_max_position_embeddings=CONTEXT_LENGTH, initializer_range=INIT_RANGE,
                                 num_key_value_heads=2, **SHAPE, **DECODER_SPECIALS),
        Phi3ForCausalLM,
    ),
    "gemma": TinyKind(_rope_decoder(GemmaConfig, num_key_value_heads=1), GemmaForCausalLM),
    # attention that SDPA cannot reproduce: soft-capped logits (so no SDPA at all), and a window shorter than a prompt
    "gemma2-softcap": TinyKind(_rope_decoder(Gemma2Config, num_key_value_heads=2, sliding_window=WINDOW,
                                             attn_logit_softcapping=5.0), Gemma2ForCausalLM),
    "mistral-window": TinyKind(_rope_decoder(MistralConfig, num_key_value_heads=2, sliding_window=WINDOW),
                               MistralForCausalLM),
    "bert": TinyKind(
        lambda vocab: BertConfig(vocab_size=vocab, max_position_embeddings=CONTEXT_LENGTH,
                                 initializer_range=INIT_RANGE, pad_token_id=0, **SHAPE),
        BertForMaskedLM, causal=False,
    ),
    "mamba": TinyKind(
        lambda vocab: MambaConfig(vocab_size=vocab, hidden_size=32, state_size=4, num_hidden_layers=2,
                                  **DECODER_SPECIALS),
        MambaForCausalLM,
    ),
}
ATTENTION_KINDS = [name for name in TINY_KINDS if name != "mamba"]


def bpe_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (as GPT-2, Llama 3 and Qwen use) on the corpus."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece with [CLS] ... [SEP] around every input."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(CORPUS, trainer=trainer)
    backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                       ("[CLS]", backend.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                                   cls_token="[CLS]", pad_token="[PAD]", mask_token="[MASK]")


def build_tiny_model(kind: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build one tiny model of `kind` with fixed random weights, and its tokenizer."""
    spec = TINY_KINDS[kind]
    tokenizer = bpe_tokenizer(spec.chat) if spec.causal else wordpiece_tokenizer()
    if spec.causal:
        assert [tokenizer.convert_tokens_to_ids(token) for token in (BOS, EOS, PAD)] == [0, 1, 2]
    torch.manual_seed(0)
    model = spec.model_class(spec.make_config(len(tokenizer)))
    return model.eval(), tokenizer


def tiny_model_folder(kind: str, root: Path) -> Path:
    """Save the tiny model of `kind` under `root` once (later calls reuse the folder) and return the folder."""
    folder = root / kind
    if not (folder / "config.json").is_file():
        model, tokenizer = build_tiny_model(kind)
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
    return folder


def deep_model_folder(root: Path, layers: int = 32, context: int = 2048) -> Path:
    """Save (once) a tiny Llama with many layers and a longer context: recording a long prompt takes seconds, long
    enough to interrupt a capture while it writes layers."""
    folder = root / f"llama-deep-{layers}"
    if not (folder / "config.json").is_file():
        tokenizer = bpe_tokenizer(chat=False)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=context, head_dim=8,
                             **{**SHAPE, "num_hidden_layers": layers}, **DECODER_SPECIALS)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def long_prompt(tokens: int) -> str:
    """Repeat the corpus until the text has at least `tokens` tokens (and about 250 more at most)."""
    text = " ".join(CORPUS)
    tokenizer = bpe_tokenizer(chat=False)
    while len(tokenizer(text).input_ids) < tokens:
        text += " " + " ".join(CORPUS)
    return text
