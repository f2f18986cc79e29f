"""The recording pass: each method's weights against the model's own eager `output_attentions`, the probe's choice,
the fallback where SDPA cannot reproduce a call, the writer thread's errors, and the state left behind."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tqdm import tqdm
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import att_report
from att_report.capturing import heap, side_weights
from att_report.capturing.recorder import (
    EAGER,
    FLOAT32_TOLERANCE,
    HEAD_CHUNKED,
    SIDE_WEIGHTS,
    find_attention_sites,
    recording,
)
from att_report.capturing.side_weights import SideWeightsAttention, weight_blocks
from att_report.capturing.streaming import block_stream
from att_report.errors import StoreError
from att_report.store import LayerWriter
from tiny_models import ATTENTION_KINDS, TINY_KINDS, build_tiny_model

Models = Callable[[str], Path]
PROMPT = "The quick brown fox jumps over the lazy dog. A bug report names the prompt"
COMPLETION = " and the model."
# What the probe picks for each tiny model as att-report loads it (encoders load with eager attention).
EXPECTED_METHOD = {"bert": HEAD_CHUNKED, "gemma2-softcap": EAGER}


def eager_weights(model: PreTrainedModel, ids: list[int]) -> list[np.ndarray]:
    """The model's own attention weights, (heads, T, T) per layer, from eager attention."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    return [layer[0].numpy() for layer in attentions]


def attention_state() -> tuple[dict[str, Any], Any]:
    """What a capture must leave as it found it: transformers' attention-function overrides and its SDPA function."""
    return dict(ALL_ATTENTION_FUNCTIONS._local_mapping), ALL_ATTENTION_FUNCTIONS["sdpa"]


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_recorded_weights_equal_output_attentions(kind: str, tiny_model: Models, tmp_path: Path) -> None:
    folder = tiny_model(kind)
    completion = COMPLETION if TINY_KINDS[kind].causal else None
    before = attention_state()
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=str(folder), completion=completion,
                                               attention_dtype="float32", progress=False))
    assert attention_state() == before
    assert store.manifest["generation"]["record_attention"] == EXPECTED_METHOD.get(kind, SIDE_WEIGHTS)
    model = TINY_KINDS[kind].model_class.from_pretrained(folder).eval()
    for layer, truth in enumerate(eager_weights(model, store.token_ids)):
        np.testing.assert_allclose(store.attention(layer), truth, rtol=0, atol=FLOAT32_TOLERANCE,
                                   err_msg=f"layer {layer}")


def test_a_sliding_window_shorter_than_the_prompt_is_kept(tiny_model: Models, tmp_path: Path) -> None:
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=str(tiny_model("mistral-window")),
                                               max_new_tokens=0, attention_dtype="float32", progress=False))
    window = TINY_KINDS["mistral-window"].make_config(300).sliding_window
    assert store.num_tokens > 2 * window
    rows, keys = np.indices((store.num_tokens, store.num_tokens))
    outside = rows - keys >= window
    assert not store.attention(0)[:, outside].any()  # no weight beyond the window
    assert store.manifest["generation"]["record_attention"] == SIDE_WEIGHTS


def test_many_row_blocks_equal_one(tiny_model: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 5 rows (a default block is longer than any tiny prompt) tile every layer exactly."""
    monkeypatch.setattr(side_weights, "block_rows", lambda *_: 5)
    folder = tiny_model("llama-gqa")
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=str(folder), max_new_tokens=0,
                                               attention_dtype="float32", progress=False))
    assert store.num_tokens > 3 * 5
    model = TINY_KINDS["llama-gqa"].model_class.from_pretrained(folder).eval()
    for layer, truth in enumerate(eager_weights(model, store.token_ids)):
        np.testing.assert_allclose(store.attention(layer), truth, rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("mask_kind", ["causal", "none", "bool", "float", "per-head"])
def test_weight_blocks_follow_sdpa_masks(mask_kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, length, dim = 6, 2, 11, 4
    query = torch.randn(1, heads, length, dim, generator=generator) * 3
    key = torch.randn(1, kv_heads, length, dim, generator=generator) * 3
    allowed = torch.rand(1, heads if mask_kind == "per-head" else 1, length, length, generator=generator) > 0.3
    allowed |= torch.eye(length, dtype=torch.bool)  # no row fully masked
    mask = {"causal": None, "none": None, "bool": allowed, "per-head": allowed,
            "float": torch.where(allowed, 0.0, torch.finfo(torch.float32).min)}[mask_kind]
    module = torch.nn.Module().eval()
    module.is_causal = mask_kind != "none"
    scores = torch.matmul(query, key.repeat_interleave(heads // kv_heads, dim=1).transpose(2, 3)) * 0.5
    if mask_kind == "causal":
        scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    elif mask is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    expected = torch.softmax(scores, dim=-1)[0]
    wanted = [0, 2, 3, 5]
    got = torch.zeros_like(expected)
    for block_heads, first, weights in weight_blocks(module, query, key, mask, {"scaling": 0.5}, wanted, rows=4):
        rows = min(4, length - first)
        assert weights.shape == (len(block_heads), rows, first + rows if mask_kind == "causal" else length)
        got[block_heads, first:first + rows, :weights.shape[2]] = weights
    torch.testing.assert_close(got[wanted], expected[wanted], rtol=0, atol=1e-6)
    assert not got[[1, 4]].any()  # heads not asked for are not computed


def test_blocks_are_row_blocks_that_fit_the_heap() -> None:
    """Whole store row blocks of 64 rows, at least 4 to a pass, each below glibc's largest heap block."""
    assert side_weights.block_rows(9, 8192) == 64 and side_weights.block_rows(9, 1000) == 256  # 4 blocks at least
    assert side_weights.block_rows(64, 131072) == 64 and side_weights.block_rows(9, 100) == 64  # a store row block
    assert 9 * 64 * 8192 * 4 <= side_weights.BLOCK_BYTES < heap.HEAP_BLOCK_BYTES


def test_calls_sdpa_cannot_reproduce_fall_back() -> None:
    """A call it can reproduce gives the output of its own weights, softmax(Q·Kᵀ·scaling + causal mask)·V (by hand),
    when every head is recorded, and the fast function's when only some are or when told not to (a model not in
    float32). Soft capping, an unknown keyword, a key/value cache or training: the call runs the fallback, which
    gives the output and the weights."""
    calls: list[str] = []

    def function(name: str) -> Callable[..., tuple[torch.Tensor, None]]:
        def attention(module: Any, query: torch.Tensor, *_: Any, **__: Any) -> tuple[torch.Tensor, None]:
            calls.append(name)
            return query, None

        return attention

    module = torch.nn.Module().eval()
    recorded: dict[int, str] = {}
    attention = SideWeightsAttention(function("fast"), function("fallback"), {id(module): 0},
                                     lambda *_: None, None, recorded)
    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    output, weights = attention(module, query, key, value, None, scaling=0.5, softcap=None, sliding_window=None)
    scores = (query @ key.transpose(-1, -2) * 0.5).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -torch.inf)
    torch.testing.assert_close(output, (torch.softmax(scores, -1) @ value).transpose(1, 2), rtol=0, atol=1e-6)
    assert weights is None and calls == [] and recorded == {0: SIDE_WEIGHTS}
    some_heads = SideWeightsAttention(function("fast"), function("fallback"), {id(module): 0},
                                      lambda *_: None, [1], recorded)
    some_heads(module, query, key, value, None, scaling=0.5)
    not_float32 = SideWeightsAttention(function("fast"), function("fallback"), {id(module): 0},
                                       lambda *_: None, None, recorded, own_output=False)
    not_float32(module, query, key, value, None, scaling=0.5)
    assert calls == ["fast", "fast"]
    for kwargs in ({"softcap": 30.0}, {"s_aux": torch.zeros(2)}, {"position_bias": torch.zeros(1)}):
        attention(module, query, key, key, None, scaling=0.5, **kwargs)
    attention(module, query, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), None)  # keys from a cache
    module.train()
    attention(module, query, key, key, None, dropout=0.1)
    assert calls == ["fast", "fast"] + ["fallback"] * 5


def test_generation_steps_queries_wait_for_a_row_block_and_give_every_rows_weights() -> None:
    """A prompt call, then one query per step over the growing keys, as `generate` calls attention: the steps'
    weights reach the sink a row block at a time (the block ending at row 63 without waiting for the flush), and
    every row is softmax(q·K^T · scaling) over the keys up to its own, computed here by hand."""
    module = torch.nn.Module().eval()
    torch.manual_seed(0)
    query, key = torch.randn(1, 4, 70, 8), torch.randn(1, 2, 70, 8)
    blocks: list[tuple[int, int]] = []
    rows = torch.zeros(4, 70, 70)

    def sink(layer: int, heads: list[int], first_row: int, weights: torch.Tensor) -> None:
        blocks.append((first_row, weights.shape[1]))
        rows[heads, first_row:first_row + weights.shape[1], :weights.shape[2]] = weights

    def fast(_module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any,
             **__: Any) -> tuple[torch.Tensor, None]:
        return query.transpose(1, 2), None  # the output is not what this test looks at

    attention = SideWeightsAttention(fast, fast, {id(module): 0}, sink, None, {}, own_output=False)
    attention(module, query[:, :, :40], key[:, :, :40], key[:, :, :40], None, scaling=0.5)
    for step in range(40, 70):
        attention(module, query[:, :, step:step + 1], key[:, :, :step + 1], key[:, :, :step + 1], None, scaling=0.5)
    assert blocks == [(0, 40), (40, 24)]  # rows 40-63 came when row 63 did; 64-69 still wait
    attention.flush()
    assert blocks[-1] == (64, 6)
    keys = key.repeat_interleave(2, dim=1)[0]  # each pair of query heads shares a key/value head
    later = torch.ones(70, 70, dtype=torch.bool).triu(1)
    scores = (query[0] @ keys.transpose(1, 2) * 0.5).masked_fill(later, -torch.inf)
    torch.testing.assert_close(rows, torch.softmax(scores, -1), rtol=0, atol=1e-6)


def test_recording_restores_attention_after_a_failure() -> None:
    model, tokenizer = build_tiny_model("llama-gqa")
    model.set_attn_implementation("sdpa")
    sites = find_attention_sites(model, model.config.num_hidden_layers)
    before = attention_state()

    def failing_sink(*_: Any) -> None:
        raise RuntimeError("disk on fire")

    for method in (SIDE_WEIGHTS, HEAD_CHUNKED, EAGER):
        with pytest.raises(RuntimeError, match="disk on fire"), recording(model, sites, failing_sink, method):
            model(torch.tensor([tokenizer(PROMPT).input_ids]), use_cache=False)
        assert attention_state() == before and model.config._attn_implementation == "sdpa", method


def test_a_writer_error_reaches_the_capture_as_itself(tmp_path: Path) -> None:
    writer = LayerWriter(tmp_path, num_heads=2, num_tokens=4, causal=True, dtype="float32")
    handed: list[int] = []
    with pytest.raises(StoreError, match="does not fit"):
        with tqdm(disable=True) as bar, block_stream(writer, [0, 1], bar) as stream:
            stream(0, [0, 1], 0, torch.full((2, 2, 4), 0.25))
            handed.append(1)
            stream(0, [0, 1], 2, torch.full((2, 3, 4), 0.25))  # one row too many: refused on the writer thread
            handed.append(2)
            stream(1, [0, 1], 0, torch.full((2, 4, 4), 0.25))
            handed.append(3)
    assert handed == [1, 2, 3]  # handed over without waiting; the error came at the end
    assert stream.thread._shutdown


def test_torch_leaves_the_writer_a_core_only_while_it_has_blocks(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("torch runs on one thread here: there is no core to share")
    writer = LayerWriter(tmp_path, num_heads=2, num_tokens=128, causal=True, dtype="uint8")
    with block_stream(writer, [0, 1]) as stream:
        stream(0, [0, 1], 0, torch.full((2, 64, 64), 1 / 64))
        assert torch.get_num_threads() < before
        stream(0, [0, 1], 64, torch.full((2, 64, 128), 1 / 128))
    assert torch.get_num_threads() == before and writer.files[0]["layer"] == 0
    with pytest.raises(RuntimeError, match="stop"), block_stream(writer, [0, 1]) as stream:
        stream(1, [0, 1], 0, torch.full((2, 64, 64), 1 / 64))
        raise RuntimeError("stop")
    assert torch.get_num_threads() == before


def test_a_failing_capture_leaves_no_store_and_restores_attention(tmp_path: Path) -> None:
    """Weights that overflow to NaN are refused on the writer thread; the capture fails with that error."""
    model, tokenizer = build_tiny_model("llama-gqa")
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.fill_(float("inf"))
    before = attention_state()
    with pytest.raises(StoreError, match="NaN or infinity"):
        att_report.capture(PROMPT, tmp_path / "c", model=model, tokenizer=tokenizer, completion=COMPLETION,
                           progress=False)
    assert list(tmp_path.iterdir()) == []
    assert attention_state() == before and model.config._attn_implementation == "sdpa"



@pytest.mark.parametrize("dtype", ["float16", "uint8", "float32"])
def test_encoding_threads_write_the_same_bytes(dtype: str, tmp_path: Path) -> None:
    """A block's heads encoded in parts on threads give the files one thread gives, byte for byte, and the same head
    metrics up to float64 rounding."""
    heads, tokens = 9, 150
    generator = np.random.default_rng(0)
    weights = np.tril(generator.random((2, heads, tokens, tokens), dtype=np.float32) ** 6)
    weights /= weights.sum(axis=-1, keepdims=True)
    sections = []
    for name, parallel in (("one", None), ("threads", ThreadPoolExecutor(max_workers=3))):
        writer = LayerWriter(tmp_path / name, heads, tokens, True, dtype, parallel=parallel)
        for layer in range(2):
            for first in range(0, tokens, 64):
                writer.write_block(layer, 0, first, weights[layer, :, first:first + 64, :first + 64])
            writer.finish_layer(layer)
        sections.append(writer.attention_section())
    metrics = [np.array(section.pop("metrics")["values"]) for section in sections]
    assert sections[0] == sections[1]  # the layer files' checksums included
    np.testing.assert_allclose(metrics[0], metrics[1], rtol=1e-12)  # sums over fewer heads may round differently
