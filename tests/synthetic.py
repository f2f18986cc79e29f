"""Build small stores without a model, through the real writer, for render and store tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from att_report.atomic import staged_directory
from att_report.store import LayerWriter, write_array, write_manifest


def random_attention(rng: np.random.Generator, heads: int, tokens: int, causal: bool) -> np.ndarray:
    """Make (heads, T, T) rows that are softmax distributions, masked above the diagonal when causal."""
    scores = rng.normal(scale=2.0, size=(heads, tokens, tokens))
    if causal:
        scores = np.where(np.tri(tokens, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def heavy_tailed_rows(rng: np.random.Generator, heads: int, num_tokens: int, first_row: int = 0,
                      stop_row: int | None = None) -> np.ndarray:
    """Make causal softmax rows first_row..stop_row-1 (default T-1), (heads, rows, T) float32, shaped like
    SmolLM2's at length: a sink on token 0, a bump on recent tokens, wide noise. At 4,627 tokens 98% of weights
    are below 1e-3 and 24% of a row's mass lies in weights below 1/510 (measured on SmolLM2, layer 15: 96%, 21%)."""
    query = np.arange(first_row, num_tokens if stop_row is None else stop_row)[:, None]
    key = np.arange(num_tokens)[None, :]
    scores = rng.normal(scale=2.8, size=(heads, len(query), num_tokens))
    scores += np.where(key == 0, 9.0, 0.0) + 4.0 * np.exp(-np.abs(query - key) / 8.0)
    scores = np.where(key <= query, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def write_synthetic_store(
    path: Path,
    tokens: list[str],
    prompt_length: int,
    num_layers: int = 2,
    num_heads: int = 3,
    num_kv_heads: int | None = None,
    causal: bool = True,
    seed: int = 0,
    dtype: str = "float16",
    neurons: tuple[np.ndarray, np.ndarray] | None = None,
    special: list[bool] | None = None,
    layer_indices: list[int] | None = None,
    head_indices: list[int] | None = None,
    saliency: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Write a store for `tokens` with random attention, and `neurons` (units (L, K), values (L, T, K)) and `saliency`
    (a (T, T) array stored as both kinds) as capture writes them when given, the tokens flagged `special` (none by
    default); return the float32 layers as written (only `layer_indices` and `head_indices` of the model's
    `num_layers` x `num_heads` when given). For a float16 store the weights are drawn as float16 values, so the store
    holds them exactly and the metrics the writer computes from them equal those measured from the store."""
    rng = np.random.default_rng(seed)
    stored_heads = num_heads if head_indices is None else len(head_indices)
    stored_layers = num_layers if layer_indices is None else len(layer_indices)
    layers = [random_attention(rng, stored_heads, len(tokens), causal) for _ in range(stored_layers)]
    if dtype == "float16":
        layers = [layer.astype(np.float16).astype(np.float32) for layer in layers]
    completion_length = len(tokens) - prompt_length
    with staged_directory(path) as staging:
        writer = LayerWriter(staging, num_heads, len(tokens), causal, dtype, layer_indices=layer_indices,
                             head_indices=head_indices)
        for layer in layers:
            writer.write(layer)
        write_manifest(staging, {
            "model": {
                "name": "synthetic", "revision": None, "architecture": "SyntheticForCausalLM",
                "model_type": "synthetic", "num_layers": num_layers, "num_heads": num_heads,
                "num_kv_heads": num_kv_heads or num_heads, "dtype": "float32", "causal": causal,
                "context_length": 4096,
            },
            "input": {"mode": "raw", "prompt": "".join(tokens[:prompt_length]), "system": None},
            "tokens": {
                "ids": list(range(len(tokens))), "text": tokens,
                "special": special or [False] * len(tokens), "prompt_length": prompt_length,
            },
            "generation": {"mode": "given" if completion_length else "none"},
            "completion": {
                "logprobs": [-0.5] * completion_length,
                "top": [[{"id": 1, "text": "x", "logprob": -0.5}] for _ in range(completion_length)],
            },
            "attention": writer.attention_section(),
            "software": {"att_report": "test"},
            "timings": {},
            **({"neurons": {"k": int(neurons[0].shape[1]),
                            "units": write_array(staging, "neurons/units.npy", neurons[0].astype(np.int32)),
                            "values": write_array(staging, "neurons/values.npy", neurons[1].astype(np.float32))}}
               if neurons is not None else {}),
            **({"saliency": {"rows": list(range(prompt_length, len(tokens))), "targets": [],
                             **{kind: write_array(staging, f"saliency/{kind}.npy", saliency.astype(np.float32))
                                for kind in ("grad_norm", "grad_x_input")}}}
               if saliency is not None else {}),
        })
    return layers


def heavy_tail_attention(rng: np.random.Generator, heads: int, tokens: int, block: int = 512) -> np.ndarray:
    """Make causal (heads, T, T) rows like a long prompt's: a sink and rare strong keys, the rest of the mass spread
    thinly (at a few thousand tokens most weights lie below 1/510). Built a block of rows at a time in float32, so
    8k tokens need little more than the result."""
    out = np.zeros((heads, tokens, tokens), dtype=np.float32)
    for head in range(heads):
        for start in range(0, tokens, block):
            rows = np.arange(start, min(tokens, start + block))
            scores = rng.standard_normal((len(rows), tokens), dtype=np.float32)
            scores[:, 0] += 6.0
            scores += np.where(rng.random((len(rows), tokens), dtype=np.float32) < 0.01, 5.0, 0.0).astype(np.float32)
            scores[np.arange(tokens)[None, :] > rows[:, None]] = -np.inf
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[head, rows] = weights / weights.sum(axis=1, keepdims=True)
    return out
