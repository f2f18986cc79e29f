"""The encodings' promises at length, through the real writer and reader: each weight within the stated bound of the
model's float32 value, and no mass lost: each row's sum and each block of 64 consecutive keys' sum within 0.01
(uint8-diffused: within 1/255). Checked against a tiny random-weight model's own `output_attentions` at 2,048
tokens, and against synthetic rows with the heavy tail of small weights that real attention has at length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import att_report
from att_report.analysis.metrics import METRIC_NAMES, metrics_of_layers
from att_report.atomic import staged_directory
from att_report.store import LayerWriter, write_manifest
from synthetic import heavy_tailed_rows

KEY_BLOCK = 64
LENGTH = 2048
FLOAT_SLACK = 1e-6  # float32 sums of thousands of weights, on both sides


def block_sums(rows: np.ndarray) -> np.ndarray:
    """Sum each run of 64 consecutive keys of each row (the last run shorter): (..., T) -> (..., ceil(T / 64))."""
    width = -(-rows.shape[-1] // KEY_BLOCK) * KEY_BLOCK
    padded = np.zeros((*rows.shape[:-1], width))
    padded[..., : rows.shape[-1]] = rows
    return padded.reshape(*rows.shape[:-1], -1, KEY_BLOCK).sum(axis=-1)


def assert_faithful(stored: np.ndarray, model: np.ndarray, weight_bound: float, sum_bound: float) -> None:
    """Every weight, row sum and 64-key block sum of `stored` within its bound of `model`'s (float64 sums)."""
    stored, model = stored.astype(np.float64), model.astype(np.float64)
    assert np.abs(stored - model).max() <= weight_bound + FLOAT_SLACK
    assert np.abs(stored.sum(axis=-1) - model.sum(axis=-1)).max() <= sum_bound + FLOAT_SLACK
    assert np.abs(block_sums(stored) - block_sums(model)).max() <= sum_bound + FLOAT_SLACK


def write_layers(path: Path, layers: list[np.ndarray], dtype: str, rows_per_block: int) -> att_report.CaptureStore:
    """Write (heads, T, T) layers as the capture does: two heads at a time, a block of rows at a time."""
    heads, size = layers[0].shape[0], layers[0].shape[-1]
    with staged_directory(path) as staging:
        writer = LayerWriter(staging, heads, size, True, dtype)
        for index, layer in enumerate(layers):
            for head in range(0, heads, 2):
                for row in range(0, size, rows_per_block):
                    writer.write_block(index, head, row, layer[head: head + 2, row: row + rows_per_block])
            writer.finish_layer(index)
        write_manifest(staging, {
            "model": {"name": "tiny", "num_layers": len(layers), "num_heads": heads, "causal": True},
            "tokens": {"ids": list(range(size)), "text": ["x"] * size, "special": [False] * size,
                       "prompt_length": size},
            "attention": writer.attention_section(), "generation": {}, "completion": {}, "software": {},
            "timings": {},
        })
    return att_report.load(path)


@pytest.fixture(scope="module")
def model_attention() -> list[np.ndarray]:
    """A tiny random-weight Llama's own eager attention over 2,048 random tokens: (heads, T, T) per layer."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, intermediate_size=64, initializer_range=0.3,
                         max_position_embeddings=4096, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 300, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        attentions = model(ids, output_attentions=True, use_cache=False).attentions
    return [layer[0].numpy() for layer in attentions]


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_stored_model_attention_keeps_every_weight_and_the_mass(tmp_path: Path, model_attention: list[np.ndarray],
                                                               dtype: str) -> None:
    store = write_layers(tmp_path / "s", model_attention, dtype, rows_per_block=500)
    encoding = store.encoding
    assert encoding.sum_bound <= 0.01
    for index, attention in enumerate(model_attention):
        stored = store.attention(index)
        assert not np.triu(stored, k=1).any()
        assert_faithful(stored, np.tril(attention), encoding.weight_bound, encoding.sum_bound)
    if dtype == "uint8":  # the summaries come from the model's float32 weights, not from the bytes
        exact = metrics_of_layers(model_attention, causal=True)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(att_report.head_metrics(store).values(name), exact.values(name), rtol=1e-6)


def test_rounding_each_weight_would_lose_mass_that_diffusion_keeps(tmp_path: Path,
                                                                   model_attention: list[np.ndarray]) -> None:
    """Why the encoding diffuses its error: at 2,048 tokens much of a row's mass lies in weights below 1/510."""
    attention = np.tril(model_attention[1]).astype(np.float64)
    rounded = np.round(attention * 255) / 255
    assert (attention.sum(axis=-1) - rounded.sum(axis=-1)).max() > 0.1
    stored = write_layers(tmp_path / "s", model_attention, "uint8", rows_per_block=LENGTH).attention(1)
    assert np.abs(stored.sum(axis=-1) - attention.sum(axis=-1)).max() <= 1 / 510 + FLOAT_SLACK


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_heavy_tailed_rows_keep_every_weight_and_the_mass(tmp_path: Path, dtype: str) -> None:
    """Synthetic rows shaped like SmolLM2's at length: a sink, a recent-token bump, a tail of tiny weights."""
    rows = heavy_tailed_rows(np.random.default_rng(0), heads=2, num_tokens=2000)
    lower = np.tril(rows)
    tiny = np.where(lower < 1 / 510, lower, 0).sum(axis=-1)[:, 1000:]
    assert tiny.mean() > 0.1  # the tail the encoding must not drop
    store = write_layers(tmp_path / "s", [rows], dtype, rows_per_block=300)
    assert_faithful(store.attention(0), lower, store.encoding.weight_bound, store.encoding.sum_bound)
