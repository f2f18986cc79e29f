"""The capture stage: generate (or take) a completion, then record prompt + completion attention to a store.

Generation runs with the model's fast attention. Then one forward pass over the whole sequence records the weights
(beside the fast attention, or with eager attention, as a probe decides: recorder.py), and they stream to disk
block by block on a writer thread: for a causal model, token t's attention in this pass is the attention it had
while being generated.

The recording pass does not reuse generation's key/value cache: the pass needs every position's queries, which the
cache does not hold, and generation computed its keys over many calls of different shapes, so one pass over the
whole sequence is both simpler and the one whose weights the probe proves equal to eager attention's.
"""

from __future__ import annotations

import inspect
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from att_report import __version__
from att_report.atomic import check_replaceable, staged_directory
from att_report.capturing.config import CaptureConfig
from att_report.errors import ModelError, UsageError
from att_report.capturing.heap import keep_blocks_on_heap
from att_report.capturing.logprobs import TOP_ALTERNATIVES, CompletionScores, score_completion, tapping_final_hidden
from att_report.capturing.models import LoadedModel, context_length, is_causal_config, load_model, model_facts
from att_report.capturing.neurons import NeuronRecorder, check_neuron_count, layer_modules, recording_neurons
from att_report.capturing.prompts import PromptTokens, check_prompt_options, tokenize_input
from att_report.capturing.recorder import AttentionSite, RecordingLog, find_attention_sites, probe_attention, recording
from att_report.capturing.saliency import saliency_maps
from att_report.capturing.scope import Scope, resolve_scope
from att_report.capturing.streaming import block_stream, encoding_threads
from att_report.store import LayerWriter, is_store, write_array, write_manifest
from att_report.store.space import check_disk_space, human_bytes, projected_store_bytes
from att_report.token_text import token_texts


def capture(
    prompt: str,
    output: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> Path:
    """Capture `prompt` with a model name or folder (or the embedded default), or with an already loaded model and
    tokenizer."""
    if model is None or isinstance(model, (str, os.PathLike)):
        name = None if model is None else os.fspath(model)
        return capture_with_config(CaptureConfig(prompt=prompt, model=name, **options), Path(output))
    if tokenizer is None:
        raise UsageError("a loaded model needs its tokenizer too; pass tokenizer=... to att_report.capture().")
    config = CaptureConfig(prompt=prompt, model=getattr(model, "name_or_path", None), **options)
    loaded = LoadedModel(model=model.eval(), tokenizer=tokenizer, name=str(config.model or type(model).__name__),
                         revision=None, causal=is_causal_config(model.config))
    return capture_loaded(loaded, config, Path(output), load_seconds=0.0)


def capture_with_config(config: CaptureConfig, output: Path) -> Path:
    """Load the model `config` names and capture; the output path and prompt are checked before any slow work."""
    check_replaceable(output, config.force, is_store, "capture")
    check_prompt_options(config)
    started = time.perf_counter()
    loaded = load_model(config)
    return capture_loaded(loaded, replace(config, model=loaded.name), output, time.perf_counter() - started)


def capture_loaded(loaded: LoadedModel, config: CaptureConfig, output: Path, load_seconds: float) -> Path:
    """Run the whole capture with a loaded model and write the store at `output` atomically."""
    check_replaceable(output, config.force, is_store, "capture")
    tokens = tokenize_input(loaded.tokenizer, config, loaded.causal)
    facts = model_facts(loaded)
    _check_request(loaded, tokens, config)
    scope = resolve_scope(config.layers, config.heads, facts["num_layers"], facts["num_heads"])
    sites = find_attention_sites(loaded.model, facts["num_layers"])
    method = probe_attention(loaded.model, sites, tokens.prompt_ids, facts["num_heads"])
    neurons = NeuronRecorder(config.neurons) if config.neurons else None
    timings = {"load_s": round(load_seconds, 3)}
    started = time.perf_counter()
    completion_ids, stop_reason = _completion(loaded, tokens, config)
    timings["generate_s"] = round(time.perf_counter() - started, 3)
    ids = tokens.prompt_ids + completion_ids
    _check_space(output, scope, len(ids), loaded.causal, config)
    started = time.perf_counter()
    keep_blocks_on_heap()
    with staged_directory(output) as staging, encoding_threads() as parallel:
        writer = LayerWriter(staging, facts["num_heads"], len(ids), loaded.causal, config.attention_dtype,
                             layer_indices=scope.layers, head_indices=scope.heads, parallel=parallel)
        recorded = _record(loaded, sites, method, scope, ids, len(completion_ids), writer, config.progress, neurons)
        timings["record_s"] = round(time.perf_counter() - started, 3)
        manifest = {
            "model": facts,
            "input": {"mode": tokens.mode, "prompt": config.prompt, "system": config.system},
            "tokens": _token_section(loaded.tokenizer, ids, len(tokens.prompt_ids)),
            "generation": _generation_section(config, tokens, stop_reason, loaded, recorded.log.implementation()),
            "completion": _completion_section(loaded.tokenizer, recorded.scores),
            "attention": writer.attention_section(),
            "software": _software(),
            "timings": timings,
        }
        if neurons is not None:
            manifest["neurons"] = _neuron_section(staging, neurons)
        if recorded.encoder_logits is not None:
            manifest["predictions"] = _prediction_section(loaded.tokenizer, recorded.encoder_logits, ids,
                                                          config.predict_all)
        if config.saliency:
            started = time.perf_counter()
            manifest["saliency"] = _saliency_section(staging, loaded, ids, len(tokens.prompt_ids), config.progress)
            timings["saliency_s"] = round(time.perf_counter() - started, 3)
        write_manifest(staging, manifest)
    return output


def _check_space(output: Path, scope: Scope, num_tokens: int, causal: bool, config: CaptureConfig) -> None:
    """Say how big the store will be and refuse before recording if its disk cannot hold it."""
    needed = projected_store_bytes(len(scope.layers), len(scope.heads), num_tokens, causal, config.attention_dtype)
    check_disk_space(output.parent, needed)
    if config.progress:
        print(f"att-report: the store will take about {human_bytes(needed)} ({len(scope.layers)} layers x "
              f"{len(scope.heads)} heads x {num_tokens} tokens)", file=sys.stderr)


def _check_request(loaded: LoadedModel, tokens: PromptTokens, config: CaptureConfig) -> None:
    """Refuse what cannot work before any slow step: too long, or an analysis the model cannot give."""
    _check_context(loaded, tokens, config)
    if config.saliency and not loaded.causal:
        raise UsageError("--saliency explains generated tokens, so it needs a causal LM; this model is an encoder.")
    if config.neurons:
        check_neuron_count(config.neurons, int(loaded.model.config.get_text_config().hidden_size))
    if config.predict_all and loaded.causal:
        raise UsageError("--predict-all is for encoders with a masked-LM head; this model is a causal LM.")


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
    if config.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens is {config.max_new_tokens}; give 0 (the prompt alone) or more.")


def _completion(loaded: LoadedModel, tokens: PromptTokens, config: CaptureConfig) -> tuple[list[int], str | None]:
    """Generate the completion, or take the given one; an encoder has none."""
    if not loaded.causal:
        return [], None
    if tokens.completion_ids is not None:
        return tokens.completion_ids, None
    if config.max_new_tokens == 0:
        return [], None
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


def _record(loaded: LoadedModel, sites: list[AttentionSite], method: str, scope: Scope, ids: list[int],
            completion_length: int, writer: LayerWriter, progress: bool,
            neurons: NeuronRecorder | None) -> RecordedOutputs:
    """Run one forward pass recording with `method` the attention of the layers and heads in `scope`, streaming it
    to `writer` block by block; score the completion."""
    model = loaded.model
    layers = layer_modules(model, len(sites)) if neurons is not None else []
    input_ids = torch.tensor([ids], device=model.device)
    options: dict[str, Any] = {}
    if loaded.causal and "logits_to_keep" in inspect.signature(model.forward).parameters:
        options["logits_to_keep"] = 1
    first_predictor = len(ids) - completion_length - 1
    with tqdm(total=len(scope.layers), desc="recording attention", unit="layer", disable=not progress) as bar, \
            block_stream(writer, scope.heads, bar) as stream, torch.inference_mode(), \
            recording(model, sites, stream, method, scope.layers, scope.heads) as log, \
            recording_neurons(layers, neurons or NeuronRecorder(0)), \
            tapping_final_hidden(model, first_predictor, len(ids)) as final_hidden:
        outputs = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False, **options)
    if len(writer.files) != len(scope.layers):
        raise ModelError(f"only {len(writer.files)} of {len(scope.layers)} layers returned attention weights.")
    logits = getattr(outputs, "logits", None)
    if logits is None or not loaded.causal:
        return RecordedOutputs(log=log, encoder_logits=None if logits is None else logits[0], scores=None)
    if completion_length == 0:
        return RecordedOutputs(log=log, encoder_logits=None, scores=None)

    def plain_logits() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids, use_cache=False).logits[0, first_predictor:-1]

    completion_ids = ids[len(ids) - completion_length:]
    scores = score_completion(model, final_hidden.states, logits[0, -1], completion_ids, plain_logits)
    return RecordedOutputs(log=log, encoder_logits=None, scores=scores)


@dataclass(frozen=True)
class RecordedOutputs:
    """What the recording pass yields besides attention: how it recorded, an encoder's logits or the completion's
    scores."""

    log: RecordingLog
    encoder_logits: torch.Tensor | None
    scores: CompletionScores | None


def _token_section(tokenizer: Any, ids: list[int], prompt_length: int) -> dict[str, Any]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return {
        "ids": ids,
        "text": token_texts(tokenizer, ids),
        "special": [token_id in special for token_id in ids],
        "prompt_length": prompt_length,
    }


def _generation_section(config: CaptureConfig, tokens: PromptTokens, stop_reason: str | None,
                        loaded: LoadedModel, record_attention: str) -> dict[str, Any]:
    if not loaded.causal or (tokens.completion_ids is None and config.max_new_tokens == 0):
        mode = "none"
    elif tokens.completion_ids is not None:
        mode = "given"
    else:
        mode = "sample" if config.sample else "greedy"
    section: dict[str, Any] = {"mode": mode, "stop_reason": stop_reason, "device": str(loaded.model.device),
                               "record_attention": record_attention}
    if mode in ("greedy", "sample"):
        section["max_new_tokens"] = config.max_new_tokens
    if mode == "sample":
        section.update(seed=config.seed, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    return section


def _completion_section(tokenizer: Any, scores: CompletionScores | None) -> dict[str, Any]:
    """Give each completion token its log-probability and the likeliest alternatives at its position."""
    if scores is None:
        return {"logprobs": [], "top": []}
    top = [_alternatives(tokenizer, values, ids_row, "logprob")
           for values, ids_row in zip(scores.top_logprobs.numpy(), scores.top_ids.numpy())]
    return {"logprobs": [round(float(value), 5) for value in scores.logprobs.numpy()], "top": top}


def _neuron_section(staging: Path, neurons: NeuronRecorder) -> dict[str, Any]:
    units, values = neurons.arrays()
    return {"k": neurons.k, "units": write_array(staging, "neurons/units.npy", units),
            "values": write_array(staging, "neurons/values.npy", values)}


def _saliency_section(staging: Path, loaded: LoadedModel, ids: list[int], prompt_length: int,
                      progress: bool) -> dict[str, Any]:
    maps = saliency_maps(loaded.model, ids, prompt_length, progress)
    return {
        "rows": maps.rows,
        "targets": maps.targets,
        "grad_norm": write_array(staging, "saliency/grad_norm.npy", maps.grad_norm),
        "grad_x_input": write_array(staging, "saliency/grad_x_input.npy", maps.grad_x_input),
    }


def _prediction_section(tokenizer: Any, logits: torch.Tensor, ids: list[int], every_position: bool) -> dict[str, Any]:
    """Give the masked-LM head's likeliest tokens at each [MASK] (or at every position)."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    positions = [index for index, token_id in enumerate(ids) if every_position or token_id == mask_id]
    probabilities = torch.softmax(logits[positions], dim=-1) if positions else logits[:0]
    top_values, top_ids = probabilities.topk(TOP_ALTERNATIVES, dim=-1)
    return {
        "positions": positions,
        "top": [_alternatives(tokenizer, values, row_ids, "probability")
                for values, row_ids in zip(top_values.cpu().numpy(), top_ids.cpu().numpy())],
    }


def _alternatives(tokenizer: Any, values: np.ndarray, token_ids: np.ndarray, key: str) -> list[dict[str, Any]]:
    return [{"id": int(token_id), "text": tokenizer.decode([int(token_id)]), key: round(float(value), 5)}
            for value, token_id in zip(values, token_ids)]


def _software() -> dict[str, str]:
    return {
        "att_report": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "platform": sys.platform,
    }

