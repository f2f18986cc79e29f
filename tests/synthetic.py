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
    saliency: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Write a store for `tokens` with random attention, and `neurons` (units (L, K), values (L, T, K)) and `saliency`
    (a (T, T) array stored as both kinds) as capture writes them when given; return the float32 layers as written."""
    rng = np.random.default_rng(seed)
    layers = [random_attention(rng, num_heads, len(tokens), causal) for _ in range(num_layers)]
    completion_length = len(tokens) - prompt_length
    with staged_directory(path) as staging:
        writer = LayerWriter(staging, num_heads, len(tokens), causal, dtype)
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
                "special": [False] * len(tokens), "prompt_length": prompt_length,
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
