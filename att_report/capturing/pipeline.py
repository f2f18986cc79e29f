"""The capture stage: generate (or take) a completion and record prompt + completion attention to a store.

A generated completion is recorded while it is generated, where a probe shows that this gives eager attention's
weights (recorder.records_while_generating): side weights are computed beside each of `generate`'s SDPA calls, the
prompt's rows in its first call and then one row per token over its key/value cache, so the prompt is run once, not
again in a second pass, and the tokens are exactly plain `generate`'s. Otherwise (a given completion, an encoder,
--neurons, which rank units over the whole sequence, or a model recorded another way), one forward pass over the
whole sequence records the weights after generation (beside the fast attention, or with eager attention, as a probe
decides: recorder.py). Either way the weights stream to disk block by block on a writer thread, and for a causal
model token t's stored attention is the attention it had while being generated.
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

from att_report import __version__
from att_report.atomic import check_replaceable, staged_directory
from att_report.capturing.config import CaptureConfig
from att_report.capturing.generation import generate, generate_every_step, sampling_options
from att_report.capturing.heap import keep_blocks_on_heap
from att_report.capturing.logprobs import TOP_ALTERNATIVES, CompletionScores, score_completion, tapping_final_hidden
from att_report.capturing.models import LoadedModel, context_length, is_causal_config, load_model, model_facts
from att_report.capturing.neurons import NeuronRecorder, check_neuron_count, layer_modules, recording_neurons
from att_report.capturing.prompts import PromptTokens, check_prompt_options, tokenize_input
from att_report.capturing.recorder import (
    AttentionSite,
    RecordingLog,
    find_attention_sites,
    probe_attention,
    recording,
    records_while_generating,
)
from att_report.capturing.side_weights import SIDE_WEIGHTS
from att_report.capturing.saliency import saliency_maps
from att_report.capturing.scope import Scope, resolve_scope
from att_report.capturing.streaming import block_stream, encoding_threads
from att_report.errors import ModelError, UsageError
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
    while_generating = _can_record_while_generating(loaded, sites, method, tokens, config)
    timings = {"load_s": round(load_seconds, 3)}
    if while_generating:
        length = len(tokens.prompt_ids) + config.max_new_tokens  # the most it can reach: the writer ends it earlier
    else:
        started = time.perf_counter()
        completion_ids, stop_reason = _completion(loaded, tokens, config)
        timings["generate_s"] = round(time.perf_counter() - started, 3)
        length = len(tokens.prompt_ids) + len(completion_ids)
    _check_space(output, scope, length, loaded.causal, config)
    started = time.perf_counter()
    keep_blocks_on_heap()
    with staged_directory(output) as staging, encoding_threads() as parallel:
        writer = LayerWriter(staging, facts["num_heads"], length, loaded.causal, config.attention_dtype,
                             layer_indices=scope.layers, head_indices=scope.heads, parallel=parallel)
        if while_generating:
            completion_ids, stop_reason, recorded, generated_at = _generate_recording(loaded, sites, scope, tokens,
                                                                                     config, writer)
            timings["generate_s"] = round(generated_at - started, 3)
        else:
            recorded = _record(loaded, sites, method, scope, tokens.prompt_ids + completion_ids, len(completion_ids),
                               writer, config.progress, neurons)
        timings["record_s"] = round(time.perf_counter() - started, 3)
        ids = tokens.prompt_ids + completion_ids
        manifest = {
            "model": facts,
            "input": {"mode": tokens.mode, "prompt": config.prompt, "system": config.system},
            "tokens": _token_section(loaded.tokenizer, ids, len(tokens.prompt_ids)),
            "generation": _generation_section(config, tokens, stop_reason, loaded, recorded.log.implementation(),
                                              while_generating),
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


def _can_record_while_generating(loaded: LoadedModel, sites: list[AttentionSite], method: str,
                                 tokens: PromptTokens, config: CaptureConfig) -> bool:
    """Whether to record while generating: a completion to generate, nothing that needs the whole sequence first
    (--neurons), side weights for the model, and a probe showing they give every row's weights inside generate."""
    return (loaded.causal and tokens.completion_ids is None and config.max_new_tokens > 0 and not config.neurons
            and method == SIDE_WEIGHTS and records_while_generating(loaded.model, sites, tokens.prompt_ids))


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
    return generate(loaded.model, tokens.prompt_ids, config.max_new_tokens, _sampling(config),
                    progress=config.progress)


def _sampling(config: CaptureConfig) -> dict[str, Any]:
    return sampling_options(config.sample, config.seed, config.temperature, config.top_p, config.top_k)


def _generate_recording(loaded: LoadedModel, sites: list[AttentionSite], scope: Scope, tokens: PromptTokens,
                        config: CaptureConfig, writer: LayerWriter) -> tuple[list[int], str, RecordedOutputs, float]:
    """Generate with side weights recorded in every call, streaming them to `writer` (opened for the most tokens
    the generation can reach), run the last token's step, end the store at the length reached and score the
    completion; also give when generation ended (a perf_counter time)."""
    model = loaded.model
    prompt_length = len(tokens.prompt_ids)
    with block_stream(writer, scope.heads) as stream:
        with recording(model, sites, stream, SIDE_WEIGHTS, scope.layers, scope.heads, sdpa_output=True) as log, \
                tapping_final_hidden(model, prompt_length - 1, writer.num_tokens) as final_hidden:
            completion_ids, stop_reason, last_logits = generate_every_step(
                model, tokens.prompt_ids, config.max_new_tokens, _sampling(config), progress=config.progress)
        generated_at = time.perf_counter()
        stream.end_at(prompt_length + len(completion_ids))
    _check_layers(writer, scope)
    scores = _scores(model, tokens.prompt_ids + completion_ids, len(completion_ids), final_hidden.states, last_logits)
    return completion_ids, stop_reason, RecordedOutputs(log=log, encoder_logits=None, scores=scores), generated_at


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
    with tqdm(total=len(scope.layers), desc="recording attention", unit="layer", disable=not progress) as bar, \
            block_stream(writer, scope.heads, bar) as stream, torch.inference_mode(), \
            recording(model, sites, stream, method, scope.layers, scope.heads) as log, \
            recording_neurons(layers, neurons or NeuronRecorder(0)), \
            tapping_final_hidden(model, len(ids) - completion_length - 1, len(ids)) as final_hidden:
        outputs = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False, **options)
    _check_layers(writer, scope)
    logits = getattr(outputs, "logits", None)
    if logits is None or not loaded.causal:
        return RecordedOutputs(log=log, encoder_logits=None if logits is None else logits[0], scores=None)
    if completion_length == 0:
        return RecordedOutputs(log=log, encoder_logits=None, scores=None)
    scores = _scores(model, ids, completion_length, final_hidden.states, logits[0, -1])
    return RecordedOutputs(log=log, encoder_logits=None, scores=scores)


def _check_layers(writer: LayerWriter, scope: Scope) -> None:
    if len(writer.files) != len(scope.layers):
        raise ModelError(f"only {len(writer.files)} of {len(scope.layers)} layers returned attention weights.")


def _scores(model: Any, ids: list[int], completion_length: int, states: torch.Tensor,
            last_logits: torch.Tensor) -> CompletionScores:
    """Score the completion from the final hidden states of its predicting positions and the last one, whose
    logits (the model's own) show whether the output head alone turns states into logits."""
    first_predictor = len(ids) - completion_length - 1

    def plain_logits() -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([ids], device=model.device), use_cache=False).logits[0, first_predictor:-1]

    return score_completion(model, states, last_logits, ids[first_predictor + 1:], plain_logits)


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
                        loaded: LoadedModel, record_attention: str, while_generating: bool) -> dict[str, Any]:
    if not loaded.causal or (tokens.completion_ids is None and config.max_new_tokens == 0):
        mode = "none"
    elif tokens.completion_ids is not None:
        mode = "given"
    else:
        mode = "sample" if config.sample else "greedy"
    section: dict[str, Any] = {"mode": mode, "stop_reason": stop_reason, "device": str(loaded.model.device),
                               "record_attention": record_attention,
                               "recorded": "while generating" if while_generating else "in one pass"}
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

