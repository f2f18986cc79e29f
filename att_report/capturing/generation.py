"""Generate a completion with the model's own `generate`, so the tokens are the ones a user of the model gets.

Recording can run inside it (capturing/pipeline.py, generate_every_step): generation then keeps every key and value
in a plain DynamicCache, so each call's queries sit at known positions after the cached keys, and after the last
token is chosen one more step runs it, since `generate` never feeds its last token back and that token's attention
row is part of the capture.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel
from transformers.generation.streamers import BaseStreamer


def sampling_options(sample: bool, seed: int, temperature: float, top_p: float, top_k: int) -> dict[str, Any]:
    """`generate`'s options for greedy decoding, or for sampling (seeding torch's generator now)."""
    if not sample:
        return {"do_sample": False}
    torch.manual_seed(seed)
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}


def generate_every_step(model: PreTrainedModel, prompt_ids: list[int], max_new_tokens: int,
                        sampling: dict[str, Any], *, progress: bool = False,
                        at_least: int = 0) -> tuple[list[int], str, torch.Tensor]:
    """Generate as `generate` does, keeping every key and value in a plain DynamicCache, then run the step
    `generate` leaves out, the last token's over that cache, so every position of prompt + completion has run once
    (to record while generating); return the completion, why it stopped and the last position's logits."""
    cache = DynamicCache()
    completion, stop_reason = generate(model, prompt_ids, max_new_tokens, sampling, progress=progress, cache=cache,
                                       at_least=at_least)
    with torch.inference_mode():
        last_logits = model(torch.tensor([completion[-1:]], device=model.device), use_cache=True,
                            **{_cache_keyword(model): cache}).logits[0, -1]
    return completion, stop_reason, last_logits


def generate(model: PreTrainedModel, prompt_ids: list[int], max_new_tokens: int, sampling: dict[str, Any], *,
             progress: bool = False, cache: DynamicCache | None = None, at_least: int = 0) -> tuple[list[int], str]:
    """Generate up to `max_new_tokens` (at least `at_least`) after the prompt with the model's fast attention,
    filling `cache` if given; return the completion and why it stopped (`eos` or `length`)."""
    input_ids = torch.tensor([prompt_ids], device=model.device)
    eos = _eos_ids(model)
    options: dict[str, Any] = {} if cache is None else {_cache_keyword(model): cache}
    if at_least:
        options["min_new_tokens"] = at_least
    description = "generating" if cache is None else "generating, recording attention"
    with tqdm(total=max_new_tokens, desc=description, unit="tok", disable=not progress) as bar:
        with torch.inference_mode():
            output = model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                pad_token_id=(eos or [0])[0] if model.generation_config.pad_token_id is None else None,
                streamer=_ProgressStreamer(bar), **sampling, **options,
            )
    completion = output[0, len(prompt_ids):].tolist()
    return completion, "eos" if completion and completion[-1] in eos else "length"


def _cache_keyword(model: PreTrainedModel) -> str:
    """The keyword that takes a key/value cache: `cache` in recent transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _eos_ids(model: PreTrainedModel) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


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
