"""The capture stage: generate (or take) a completion, then record prompt + completion attention to a store.

Generation runs with the model's fast attention. Then one forward pass over the whole sequence runs with eager
attention, and each layer's weights stream to disk as that layer finishes: for a causal model, token t's attention in
this pass is the attention it had while being generated.
"""

from __future__ import annotations

import inspect
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from att_report import __version__
from att_report.atomic import check_replaceable, staged_directory
from att_report.config import CaptureConfig
from att_report.errors import ModelError, UsageError
from att_report.models import LoadedModel, context_length, is_causal_config, load_model, model_facts
from att_report.prompts import PromptTokens, tokenize_input
from att_report.recorder import AttentionSite, eager_attention, find_attention_sites, probe_attention, recording
from att_report.store import LayerWriter, is_store, write_manifest
from att_report.token_text import token_texts

TOP_ALTERNATIVES = 5


def capture(
    prompt: str,
    output: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> Path:
    """Capture `prompt` with a model name (or the embedded default), or with an already loaded model and tokenizer."""
    if model is None or isinstance(model, str):
        return capture_with_config(CaptureConfig(prompt=prompt, model=model, **options), Path(output))
    if tokenizer is None:
        raise UsageError("a loaded model needs its tokenizer too; pass tokenizer=... to att_report.capture().")
    config = CaptureConfig(prompt=prompt, model=getattr(model, "name_or_path", None), **options)
    loaded = LoadedModel(model=model.eval(), tokenizer=tokenizer, name=str(config.model or type(model).__name__),
                         revision=None, causal=is_causal_config(model.config))
    return capture_loaded(loaded, config, Path(output), load_seconds=0.0)


def capture_with_config(config: CaptureConfig, output: Path) -> Path:
    """Load the model `config` names and capture; the output path is checked before any slow work."""
    check_replaceable(output, config.force, is_store, "capture")
    started = time.perf_counter()
    loaded = load_model(config)
    return capture_loaded(loaded, replace(config, model=loaded.name), output, time.perf_counter() - started)


def capture_loaded(loaded: LoadedModel, config: CaptureConfig, output: Path, load_seconds: float) -> Path:
    """Run the whole capture with a loaded model and write the store at `output` atomically."""
    check_replaceable(output, config.force, is_store, "capture")
    tokens = tokenize_input(loaded.tokenizer, config, loaded.causal)
    facts = model_facts(loaded)
    _check_context(loaded, tokens, config)
    sites = find_attention_sites(loaded.model, facts["num_layers"])
    probe_attention(loaded.model, sites, tokens.prompt_ids, facts["num_heads"])
    timings = {"load_s": round(load_seconds, 3)}
    started = time.perf_counter()
    completion_ids, stop_reason = _completion(loaded, tokens, config)
    timings["generate_s"] = round(time.perf_counter() - started, 3)
    ids = tokens.prompt_ids + completion_ids
    started = time.perf_counter()
    with staged_directory(output) as staging:
        writer = LayerWriter(staging, facts["num_heads"], len(ids), loaded.causal, config.attention_dtype)
        logits = _record(loaded, sites, ids, len(completion_ids), writer, config.progress)
        timings["record_s"] = round(time.perf_counter() - started, 3)
        write_manifest(staging, {
            "model": facts,
            "input": {"mode": tokens.mode, "prompt": config.prompt, "system": config.system},
            "tokens": _token_section(loaded.tokenizer, ids, len(tokens.prompt_ids)),
            "generation": _generation_section(config, tokens, stop_reason, loaded),
            "completion": _completion_section(loaded.tokenizer, logits, completion_ids),
            "attention": writer.attention_section(),
            "software": _software(),
            "timings": timings,
        })
    return output


def _check_context(loaded: LoadedModel, tokens: PromptTokens, config: CaptureConfig) -> None:
    limit = context_length(loaded)
    if not loaded.causal:
        extra = 0
    elif tokens.completion_ids is not None:
        extra = len(tokens.completion_ids)
    else:
        extra = config.max_new_tokens
    if limit is not None and len(tokens.prompt_ids) + extra > limit:
        raise UsageError(
            f"the prompt ({len(tokens.prompt_ids)} tokens) plus {extra} completion tokens exceeds the model's "
            f"context length of {limit}; shorten the prompt or lower --max-new-tokens."
        )
    if loaded.causal and tokens.completion_ids is None and config.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens is {config.max_new_tokens}; give at least 1.")


def _completion(loaded: LoadedModel, tokens: PromptTokens, config: CaptureConfig) -> tuple[list[int], str | None]:
    """Generate the completion, or take the given one; an encoder has none."""
    if not loaded.causal:
        return [], None
    if tokens.completion_ids is not None:
        return tokens.completion_ids, None
    return generate(loaded, tokens.prompt_ids, config)


def generate(loaded: LoadedModel, prompt_ids: list[int], config: CaptureConfig) -> tuple[list[int], str]:
    """Generate with the model's own fast attention; greedy unless sampling was asked for."""
    model = loaded.model
    input_ids = torch.tensor([prompt_ids], device=model.device)
    sampling: dict[str, Any] = {"do_sample": False}
    if config.sample:
        torch.manual_seed(config.seed)
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    eos = _eos_ids(model)
    with tqdm(total=config.max_new_tokens, desc="generating", unit="tok", disable=not config.progress) as bar:
        with torch.inference_mode():
            output = model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=config.max_new_tokens,
                pad_token_id=(eos or [0])[0] if model.generation_config.pad_token_id is None else None,
                streamer=_ProgressStreamer(bar), **sampling,
            )
    completion = output[0, len(prompt_ids):].tolist()
    return completion, "eos" if completion and completion[-1] in eos else "length"


class _ProgressStreamer(BaseStreamer):
    """Advance a progress bar by one per generated token (the first `put` is the prompt)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if self.seen_prompt:
            self.bar.update(1)
        self.seen_prompt = True

    def end(self) -> None:
        self.bar.refresh()


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _record(loaded: LoadedModel, sites: list[AttentionSite], ids: list[int], completion_length: int, writer: LayerWriter,
            progress: bool) -> torch.Tensor | None:
    """Run one eager forward pass, streaming each layer's weights to `writer`; return the completion's logits."""
    model = loaded.model
    input_ids = torch.tensor([ids], device=model.device)
    options: dict[str, Any] = {}
    if loaded.causal and "logits_to_keep" in inspect.signature(model.forward).parameters:
        options["logits_to_keep"] = completion_length + 1
    bar = tqdm(total=len(sites), desc="recording attention", unit="layer", disable=not progress)

    def store_layer(layer: int, weights: torch.Tensor) -> None:
        if layer != len(writer.files):
            raise ModelError(f"layer {layer} produced attention out of order; this model's layout is not supported.")
        writer.write(weights[0].detach().to("cpu", torch.float32).numpy())
        bar.update(1)

    try:
        with eager_attention(model), torch.inference_mode(), recording(sites, store_layer):
            outputs = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False, **options)
    finally:
        bar.close()
    if len(writer.files) != len(sites):
        raise ModelError(f"only {len(writer.files)} of {len(sites)} layers returned attention weights.")
    if not loaded.causal or completion_length == 0:
        return None
    return outputs.logits[0, -(completion_length + 1):-1].float()


def _token_section(tokenizer: Any, ids: list[int], prompt_length: int) -> dict[str, Any]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return {
        "ids": ids,
        "text": token_texts(tokenizer, ids),
        "special": [token_id in special for token_id in ids],
        "prompt_length": prompt_length,
    }


def _generation_section(config: CaptureConfig, tokens: PromptTokens, stop_reason: str | None,
                        loaded: LoadedModel) -> dict[str, Any]:
    if not loaded.causal:
        mode = "none"
    elif tokens.completion_ids is not None:
        mode = "given"
    else:
        mode = "sample" if config.sample else "greedy"
    section: dict[str, Any] = {"mode": mode, "stop_reason": stop_reason, "device": str(loaded.model.device),
                               "record_attention": "eager"}
    if mode in ("greedy", "sample"):
        section["max_new_tokens"] = config.max_new_tokens
    if mode == "sample":
        section.update(seed=config.seed, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    return section


def _completion_section(tokenizer: Any, logits: torch.Tensor | None, completion_ids: list[int]) -> dict[str, Any]:
    """Give each completion token its log-probability and the likeliest alternatives at its position."""
    if logits is None:
        return {"logprobs": [], "top": []}
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs[torch.arange(len(completion_ids)), torch.tensor(completion_ids, device=log_probs.device)]
    top_values, top_ids = log_probs.topk(TOP_ALTERNATIVES, dim=-1)
    top = [
        [{"id": int(token_id), "text": tokenizer.decode([int(token_id)]), "logprob": round(float(value), 5)}
         for value, token_id in zip(values, ids_row)]
        for values, ids_row in zip(top_values.cpu().numpy(), top_ids.cpu().numpy())
    ]
    return {"logprobs": [round(float(value), 5) for value in chosen.cpu().numpy()], "top": top}


def _software() -> dict[str, str]:
    return {
        "att_report": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "platform": sys.platform,
    }
