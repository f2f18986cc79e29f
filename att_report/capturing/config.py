"""What the user asked the capture stage for, as one frozen value; no torch here, so the CLI stays light."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from att_report.store.format import ATTENTION_DTYPE_CHOICES, COMPACT_FROM_TOKENS

MODEL_DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


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
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens to generate"})
    sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    seed: int = field(default=0, metadata={"help": "random seed for --sample"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens (0: all)"})
    saliency: bool = field(default=False, metadata={"help": "also store gradient saliency of each completion token (causal models)"})
    neurons: int = field(default=0, metadata={"help": "also store, per layer, the K hidden units that vary most across tokens"})
    predict_all: bool = field(default=False, metadata={"help": "encoders with a masked-LM head: top-5 predictions at every position, not only [MASK]"})
    attention_dtype: str = field(default="auto", metadata={"help": "how attention is stored: float16 (each weight within 2^-11 relative), float32 (exact), uint8 (error-diffused bytes: each weight within 1/255, no mass lost, about 0.03 bytes a weight at length), or auto: float16 below " f"{COMPACT_FROM_TOKENS:,} tokens, uint8 from there on"})
    force: bool = field(default=False, metadata={"help": "replace an existing capture at the output path"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def option_help(config_type: type, name: str) -> str:
    """Return the help text of one config field."""
    return next(f.metadata["help"] for f in fields(config_type) if f.name == name)
