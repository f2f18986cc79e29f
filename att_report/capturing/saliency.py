"""Gradient saliency: how much each earlier token's input embedding moves a completion token's log-probability.

Row t of each (T, T) matrix belongs to the token at position t and holds, for every earlier position j, either
the L2 norm of d log p(token_t | tokens_<t) / d embedding_j ("grad_norm") or that gradient dotted with
embedding_j ("grad_x_input", signed). With no completion, the last row holds the saliency of the model's likeliest
next token, predicted from every token of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

SALIENCY_KINDS = ("grad_norm", "grad_x_input")


@dataclass(frozen=True)
class SaliencyMaps:
    """The two (T, T) saliency matrices and which rows hold values, with the token each row explains."""

    grad_norm: np.ndarray
    grad_x_input: np.ndarray
    rows: list[int]
    targets: list[int]


def saliency_maps(model: Any, ids: list[int], prompt_length: int, progress: bool = False) -> SaliencyMaps:
    """Run one forward pass and one backward pass per explained token (the graph is kept between them)."""
    size = len(ids)
    input_ids = torch.tensor([ids], device=model.device)
    embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids), use_cache=False).logits[0]
        rows, targets, predictors = _explained_rows(logits, ids, prompt_length)
        log_probs = torch.log_softmax(logits[predictors].float(), dim=-1)
        chosen = log_probs[torch.arange(len(rows)), torch.tensor(targets, device=log_probs.device)]
        grad_norm = np.zeros((size, size), dtype=np.float32)
        grad_x_input = np.zeros((size, size), dtype=np.float32)
        for number, (row, predictor) in enumerate(tqdm(list(zip(rows, predictors)), desc="saliency", unit="tok",
                                                         disable=not progress)):
            (gradient,) = torch.autograd.grad(chosen[number], embeddings, retain_graph=number < len(rows) - 1)
            visible = gradient[0, : predictor + 1].float()
            grad_norm[row, : predictor + 1] = visible.norm(dim=-1).cpu().numpy()
            grad_x_input[row, : predictor + 1] = (visible * embeddings[0, : predictor + 1].float()).sum(-1).detach().cpu().numpy()
    return SaliencyMaps(grad_norm=grad_norm, grad_x_input=grad_x_input, rows=rows, targets=targets)


def _explained_rows(logits: torch.Tensor, ids: list[int], prompt_length: int) -> tuple[list[int], list[int], list[int]]:
    """Pick (row, target token, predicting position): each completion token, else the likeliest next token."""
    if prompt_length < len(ids):
        rows = list(range(prompt_length, len(ids)))
        return rows, [ids[row] for row in rows], [row - 1 for row in rows]
    last = len(ids) - 1
    return [last], [int(logits[last].argmax())], [last]
