"""What the user asked the capture stage for, as one frozen value; no torch here, so the CLI stays light."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from att_report.capturing.scope import check_scope_syntax
from att_report.errors import UsageError
from att_report.store.format import ATTENTION_DTYPE_CHOICES, COMPACT_FROM_TOKENS

MODEL_DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


@dataclass(frozen=True)
class CaptureConfig:
    """Every capture option; `help` metadata doubles as the CLI's help text."""

    prompt: str = field(metadata={"help": "the prompt text (a user message with --chat)"})
    model: str | None = field(default=None, metadata={"help": "hub id or local folder; default: the embedded SmolLM2-135M-Instruct"})
    gguf_file: str | None = field(default=None, metadata={"help": "a GGUF file to load (inside --model's folder, or a path)"})
    revision: str | None = field(default=None, metadata={"help": "model revision (branch, tag or commit) on the hub"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow the model's own Python code to run"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (float32 on CPU, the model's on GPU), float32, float16, bfloat16"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, mps, or auto"})
    device_map: str | None = field(default=None, metadata={"help": "'auto' spreads a large model over devices (accelerate)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt in the tokenizer's chat template"})
    system: str | None = field(default=None, metadata={"help": "a system message for --chat"})
    completion: str | None = field(default=None, metadata={"help": "a known completion, teacher-forced instead of generated"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens to generate (0: the prompt alone)"})
    sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    seed: int = field(default=0, metadata={"help": "random seed for --sample"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens (0: all)"})
    saliency: bool = field(default=False, metadata={"help": "also store gradient saliency of each completion token (causal models)"})
    neurons: int = field(default=0, metadata={"help": "also store, per layer, the K hidden units that vary most across tokens"})
    predict_all: bool = field(default=False, metadata={"help": "encoders with a masked-LM head: top-5 predictions at every position, not only [MASK]"})
    attention_dtype: str = field(default="auto", metadata={"help": "how attention is stored: float16 (each weight within 2^-11 relative), float32 (exact), uint8 (error-diffused bytes: each weight within 1/255, no mass lost, about 0.03 bytes a weight at length), or auto: float16 below " f"{COMPACT_FROM_TOKENS:,} tokens (counting all of --max-new-tokens when generating), uint8 from there on"})
    layers: str | None = field(default=None, metadata={"help": "store only these layers, as indices and ranges like 0,15,29 or 0-3,7 (default: all)"})
    heads: str | None = field(default=None, metadata={"help": "store only these heads of each stored layer, like 0-3,7; with grouped-query attention, query heads (default: all)"})
    force: bool = field(default=False, metadata={"help": "replace an existing capture at the output path"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def option_help(config_type: type, name: str) -> str:
    """Return the help text of one config field."""
    return next(f.metadata["help"] for f in fields(config_type) if f.name == name)


def check_settings(config: CaptureConfig) -> None:
    """Refuse settings that no model can make work (numbers out of range, a device that does not exist, local
    files that are missing) without importing torch, so a mistake is reported at once, not after a model loads."""
    if config.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens is {config.max_new_tokens}; give 0 (the prompt alone) or more.")
    if config.neurons < 0:
        raise UsageError(f"--neurons is {config.neurons}; give a number of hidden units per layer, or 0 for none.")
    if config.sample and not config.temperature > 0:
        raise UsageError(f"--temperature is {config.temperature}; give a number above 0 (1 samples as the model says).")
    if config.sample and not 0 < config.top_p <= 1:
        raise UsageError(f"--top-p is {config.top_p}; give a probability mass above 0 and at most 1.")
    if config.sample and config.top_k < 0:
        raise UsageError(f"--top-k is {config.top_k}; give 0 (all tokens) or more.")
    if not DEVICE_PATTERN.fullmatch(config.device):
        raise UsageError(f"--device {config.device!r} is not a device; use cpu, cuda, cuda:N, mps or auto.")
    check_scope_syntax(config.layers, config.heads)
    _check_local_files(config)


def _check_local_files(config: CaptureConfig) -> None:
    """A model or GGUF path that names a local file must exist (a hub id is checked when the model loads)."""
    if config.gguf_file is not None:
        if config.model is None:
            local = Path(config.gguf_file)
        elif Path(config.model).is_dir():
            local = Path(config.model) / config.gguf_file
        else:
            return  # a file name inside a hub repository
        if not local.is_file():
            raise UsageError(f"GGUF file {local} does not exist; give the path of a .gguf file with --gguf-file.")
    elif config.model is not None and _looks_local(config.model) and not Path(config.model).exists():
        raise UsageError(f"model path {config.model} does not exist; give a local model folder or a hub id with --model.")


def _looks_local(model: str) -> bool:
    """Tell a path (./x, /x, ~/x, a/b/c) from a hub id (name or owner/name)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1
