"""Completion log-probabilities without ever holding a (tokens x vocabulary) logits tensor.

The recording pass (or generation) asks the model for the last position's logits only and keeps the final hidden
states of the completion positions (a forward hook on the base model). The output head then runs on those states in
chunks. That is faithful when the model's logits are its output head applied to the final hidden state, which is
checked against the model's own logits at the last position; a model that transforms its logits further
(soft-capping, scaling) gets its logits from a second, plain forward pass instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

CHUNK_ROWS = 64
TOP_ALTERNATIVES = 5


@dataclass
class HiddenTap:
    """Hold the base model's final hidden states at positions start..end-1 of the forward calls made while it
    listens: one pass over the sequence, or generation's calls, each continuing the positions of the one before."""

    start: int
    end: int
    seen: int = 0  # positions the calls so far covered
    parts: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, _module: Any, _args: Any, output: Any) -> None:
        hidden = output[0][0]
        first, self.seen = self.seen, self.seen + hidden.shape[0]
        low, high = max(self.start, first), min(self.end, self.seen)
        if low < high:
            self.parts.append(hidden[low - first:high - first].detach())

    @property
    def states(self) -> torch.Tensor:
        return torch.cat(self.parts)


@contextmanager
def tapping_final_hidden(model: Any, start: int, end: int) -> Iterator[HiddenTap]:
    """Keep the final hidden states of positions start..end-1 while the block runs."""
    tap = HiddenTap(start, end)
    handle = model.base_model.register_forward_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()


@dataclass(frozen=True)
class CompletionScores:
    """Per completion token: its log-probability, and the likeliest tokens with theirs."""

    logprobs: torch.Tensor
    top_logprobs: torch.Tensor
    top_ids: torch.Tensor


def score_completion(model: Any, states: torch.Tensor, own_last_logits: torch.Tensor, completion_ids: list[int],
                     full_logits: Callable[[], torch.Tensor]) -> CompletionScores:
    """Score the completion from `states` (its C predicting positions plus the last position), chunk by chunk."""
    head = model.get_output_embeddings()
    with torch.inference_mode():
        plain_head = head is not None and torch.allclose(
            head(states[-1:]).float()[0], own_last_logits.float(), rtol=1e-4, atol=1e-4)
        rows = _head_rows(head, states[:-1]) if plain_head else _logit_rows(full_logits())
        chosen, top_values, top_ids = [], [], []
        targets = torch.tensor(completion_ids)
        for start, logits in rows:
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            ids = targets[start:start + len(log_probs)].to(log_probs.device)
            chosen.append(log_probs.gather(1, ids[:, None])[:, 0].cpu())
            values, indices = log_probs.topk(TOP_ALTERNATIVES, dim=-1)
            top_values.append(values.cpu())
            top_ids.append(indices.cpu())
    return CompletionScores(torch.cat(chosen), torch.cat(top_values), torch.cat(top_ids))


def _head_rows(head: Any, states: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, len(states), CHUNK_ROWS):
        yield start, head(states[start:start + CHUNK_ROWS])


def _logit_rows(logits: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, len(logits), CHUNK_ROWS):
        yield start, logits[start:start + CHUNK_ROWS]
