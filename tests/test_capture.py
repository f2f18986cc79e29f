"""Capture tiny random models of each supported architecture through the real loader, and check the store against
the model itself: `output_attentions` of an eager forward pass, plain greedy `generate`, and the tokenizer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

import att_report
from att_report.capturing.recorder import FLOAT32_TOLERANCE
from att_report.errors import UsageError
from att_report.info import info
from tiny_models import ATTENTION_KINDS, TINY_KINDS

PROMPT = "The quick brown fox jumps over"
COMPLETION = " the lazy dog."
NEW_TOKENS = 8
CAUSAL_KINDS = [kind for kind in ATTENTION_KINDS if TINY_KINDS[kind].causal]
FLOAT16_RELATIVE = 2.0**-11  # float16 keeps 11 significant bits: rounding moves a weight by at most this, relative
FLOAT16_ABSOLUTE = 2.0**-24  # the spacing of float16's subnormals, for the tiniest weights
# Recorded beside SDPA, weights differ from eager's by float32 rounding; float16 storage rounds on top of that.
STORED_FLOAT16_ABSOLUTE = FLOAT16_ABSOLUTE + FLOAT32_TOLERANCE


def all_kinds(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.parametrize("kind", ATTENTION_KINDS, indirect=True)(test)


def causal_kinds(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.parametrize("kind", CAUSAL_KINDS, indirect=True)(test)


@pytest.fixture(scope="module")
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def folder(kind: str, tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model(kind)


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> object:
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def eager_model(kind: str, folder: Path) -> PreTrainedModel:
    """The model reloaded independently of att-report, with the attention implementation that returns weights."""
    return TINY_KINDS[kind].model_class.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def generated(kind: str, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> att_report.CaptureStore:
    """A default capture: greedy completion, attention stored as float16."""
    path = att_report.capture(PROMPT, tmp_path_factory.mktemp(kind) / "generated", model=str(folder),
                              max_new_tokens=NEW_TOKENS, progress=False)
    return att_report.load(path)


@pytest.fixture(scope="module")
def forced(kind: str, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> att_report.CaptureStore:
    """A capture of a known completion, teacher-forced (an encoder has none), with attention stored as float32."""
    completion = COMPLETION if TINY_KINDS[kind].causal else None
    path = att_report.capture(PROMPT, tmp_path_factory.mktemp(kind) / "forced", model=folder,  # a Path works too
                              completion=completion, attention_dtype="float32", progress=False)
    return att_report.load(path)


def output_attentions(model: PreTrainedModel, ids: list[int]) -> list[np.ndarray]:
    """The model's own attention weights, (heads, T, T) per layer."""
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    return [layer[0].numpy() for layer in attentions]


def decoded(tokenizer: object, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@all_kinds
def test_float16_attention_equals_output_attentions(generated: att_report.CaptureStore,
                                                    eager_model: PreTrainedModel) -> None:
    expected = output_attentions(eager_model, generated.token_ids)
    assert generated.num_layers == len(expected) and generated.attention_dtype == "float16"
    for layer, truth in enumerate(expected):
        stored = generated.attention(layer)
        assert stored.shape == truth.shape == (generated.num_heads, generated.num_tokens, generated.num_tokens)
        np.testing.assert_allclose(stored, truth, rtol=FLOAT16_RELATIVE, atol=STORED_FLOAT16_ABSOLUTE,
                                   err_msg=f"layer {layer}")


@all_kinds
def test_float32_attention_equals_output_attentions(forced: att_report.CaptureStore,
                                                    eager_model: PreTrainedModel) -> None:
    expected = output_attentions(eager_model, forced.token_ids)
    assert forced.attention_dtype == "float32"
    for layer, truth in enumerate(expected):
        np.testing.assert_allclose(forced.attention(layer), truth, rtol=0, atol=FLOAT32_TOLERANCE,
                                   err_msg=f"layer {layer}")


@all_kinds
def test_rows_are_distributions_and_causal_rows_see_no_future(kind: str, generated: att_report.CaptureStore) -> None:
    causal = TINY_KINDS[kind].causal
    assert generated.causal is causal
    assert generated.manifest["attention"]["layout"] == ("lower-triangle" if causal else "square")
    above_diagonal = ~np.tri(generated.num_tokens, dtype=bool)
    for attention in generated.layers():
        # each weight moves by at most 2^-11 of itself, so a row's sum by at most 2^-11 of 1 (plus float32 sums)
        np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=FLOAT16_RELATIVE + 1e-6)
        if causal:
            assert not attention[:, above_diagonal].any()
        else:
            assert (attention[:, above_diagonal] > 0).all()  # an encoder's tokens see later tokens too


@causal_kinds
def test_generated_ids_equal_greedy_generate(kind: str, folder: Path, generated: att_report.CaptureStore,
                                             tokenizer: object) -> None:
    prompt_ids = tokenizer(PROMPT).input_ids
    model = TINY_KINDS[kind].model_class.from_pretrained(folder).eval()  # its default (fast) attention
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()
    assert generated.token_ids == greedy
    assert generated.prompt_length == len(prompt_ids)
    generation = generated.manifest["generation"]
    assert generation["mode"] == "greedy" and generation["max_new_tokens"] == NEW_TOKENS
    assert generation["stop_reason"] == ("eos" if greedy[-1] == tokenizer.eos_token_id else "length")


@causal_kinds
def test_given_completion_is_kept_token_for_token(forced: att_report.CaptureStore, tokenizer: object,
                                                  eager_model: PreTrainedModel) -> None:
    assert forced.token_ids == tokenizer(PROMPT + COMPLETION).input_ids
    assert forced.token_ids[forced.prompt_length:] == tokenizer(COMPLETION, add_special_tokens=False).input_ids
    assert "".join(forced.tokens[forced.prompt_length:]) == COMPLETION
    assert forced.manifest["generation"]["mode"] == "given"
    with torch.no_grad():
        log_probs = torch.log_softmax(eager_model(torch.tensor([forced.token_ids])).logits[0], dim=-1)
    positions = range(forced.prompt_length, forced.num_tokens)
    expected = [float(log_probs[position - 1, forced.token_ids[position]]) for position in positions]
    np.testing.assert_allclose(forced.manifest["completion"]["logprobs"], expected, atol=1e-4)
    likeliest = [int(log_probs[position - 1].argmax()) for position in positions]
    assert [top[0]["id"] for top in forced.manifest["completion"]["top"]] == likeliest


@pytest.mark.parametrize("kind", ["llama-gqa"], indirect=True)
def test_sampled_completion_is_generate_with_the_same_seed(folder: Path, tmp_path: Path, tokenizer: object) -> None:
    settings = {"temperature": 0.8, "top_k": 20, "top_p": 0.9}
    stores = [att_report.load(att_report.capture(PROMPT, tmp_path / name, model=str(folder), sample=True, seed=7,
                                                 max_new_tokens=NEW_TOKENS, progress=False, **settings))
              for name in ("a", "b")]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        sampled = model.generate(torch.tensor([tokenizer(PROMPT).input_ids]), do_sample=True,
                                 max_new_tokens=NEW_TOKENS, **settings)[0].tolist()
    assert stores[0].token_ids == stores[1].token_ids == sampled
    assert stores[0].manifest["generation"] == {**stores[0].manifest["generation"], "mode": "sample", "seed": 7,
                                                **settings}


@pytest.mark.parametrize("kind", ["llama-gqa"], indirect=True)
@pytest.mark.parametrize("dtype", ["float16", "uint8", "float32"])
def test_generation_that_stops_early_stores_its_own_length(folder: Path, tmp_path: Path, tokenizer: object,
                                                          eager_model: PreTrainedModel, dtype: str) -> None:
    """Recorded while generating, a store is opened for the token limit; an end-of-sequence token before it ends
    the store there, with every row the model's own attention and every log-probability its own."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt_ids = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        free = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=None)[0, len(prompt_ids):].tolist()
    stop = next(index for index, token in enumerate(free) if index >= 2 and token not in free[:index])
    model.generation_config.eos_token_id = free[stop]  # greedy decoding now ends at its (stop + 1)-th token
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=model, tokenizer=tokenizer,
                                               max_new_tokens=40, attention_dtype=dtype, progress=False))
    assert store.token_ids == prompt_ids + free[:stop + 1] and store.num_tokens < len(prompt_ids) + 40
    assert store.manifest["generation"]["stop_reason"] == "eos"
    assert store.manifest["generation"]["recorded"] == "while generating"
    for layer, truth in enumerate(output_attentions(eager_model, store.token_ids)):
        np.testing.assert_allclose(store.attention(layer), truth, rtol=0,
                                   atol=store.encoding.weight_bound + FLOAT32_TOLERANCE, err_msg=f"layer {layer}")
    with torch.no_grad():
        log_probs = torch.log_softmax(eager_model(torch.tensor([store.token_ids])).logits[0], dim=-1)
    expected = [float(log_probs[position - 1, store.token_ids[position]])
                for position in range(store.prompt_length, store.num_tokens)]
    np.testing.assert_allclose(store.manifest["completion"]["logprobs"], expected, atol=1e-4)


@causal_kinds
def test_generated_completions_are_recorded_while_generating_where_side_weights_record(
        generated: att_report.CaptureStore) -> None:
    generation = generated.manifest["generation"]
    side_weights = generation["record_attention"] == "sdpa-side-weights"
    assert generation["recorded"] == ("while generating" if side_weights else "in one pass")
    attention_line = next(line for line in info(generated.path).splitlines() if line.startswith("attention"))
    assert attention_line.endswith(f"recorded with {generation['record_attention']} attention"
                                   + (" while generating" if side_weights else ""))


@all_kinds
def test_tokens_join_into_the_decoded_text(generated: att_report.CaptureStore, tokenizer: object) -> None:
    assert "".join(generated.tokens) == decoded(tokenizer, generated.token_ids)
    special = set(tokenizer.all_special_ids)
    assert generated.special == [token_id in special for token_id in generated.token_ids]


@causal_kinds
def test_multibyte_characters_split_over_tokens_read_back_whole(folder: Path, tmp_path: Path,
                                                                tokenizer: object) -> None:
    prompt = "The café → 日本"  # byte-level BPE splits the unseen characters into one token per byte
    store = att_report.load(att_report.capture(prompt, tmp_path / "c", model=str(folder),
                                               max_new_tokens=0, progress=False))
    assert store.token_ids == tokenizer(prompt).input_ids and len(store.token_ids) > len(prompt.split())
    assert "".join(store.tokens) == prompt
    pieces = [text for text in store.tokens if text]
    assert pieces[-2:] == ["日", "本"] and store.tokens[-3:-1] == ["", ""]  # 3 bytes each: two empty, one whole


@all_kinds
def test_manifest_describes_the_model(kind: str, generated: att_report.CaptureStore,
                                      eager_model: PreTrainedModel) -> None:
    config = eager_model.config
    heads = config.num_attention_heads
    model = generated.manifest["model"]
    assert (generated.num_layers, generated.num_heads) == (config.num_hidden_layers, heads)
    assert generated.num_kv_heads == (getattr(config, "num_key_value_heads", None) or heads)
    assert model["architecture"] == type(eager_model).__name__ and model["model_type"] == config.model_type
    assert model["dtype"] == "float32" and model["context_length"] == 64


@pytest.mark.parametrize("kind", ["llama-gqa"], indirect=True)
def test_grouped_query_attention_records_its_kv_heads(generated: att_report.CaptureStore) -> None:
    assert generated.manifest["model"]["num_kv_heads"] == 2 and generated.num_kv_heads == 2
    assert generated.num_heads == 4  # the weights are stored per query head, each group sharing a kv head


@pytest.mark.parametrize("kind", ["qwen2"], indirect=True)
def test_chat_prompt_goes_through_the_chat_template(folder: Path, tmp_path: Path, tokenizer: object) -> None:
    store = att_report.load(att_report.capture("Why?", tmp_path / "c", model=str(folder), chat=True,
                                               system="Be terse.", max_new_tokens=2, progress=False))
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Why?"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).input_ids
    assert store.token_ids[:store.prompt_length] == expected
    assert store.manifest["input"] == {"mode": "chat", "prompt": "Why?", "system": "Be terse."}


@pytest.mark.parametrize("kind", ["bert"], indirect=True)
def test_encoder_captures_the_input_alone(generated: att_report.CaptureStore, tokenizer: object) -> None:
    assert generated.token_ids == tokenizer(PROMPT).input_ids
    assert generated.prompt_length == generated.num_tokens
    assert generated.manifest["generation"]["mode"] == "none" and generated.manifest["completion"]["logprobs"] == []


@pytest.mark.parametrize("kind", ["llama-gqa"], indirect=True)
def test_python_api_takes_a_loaded_model_and_tokenizer(folder: Path, tmp_path: Path,
                                                       eager_model: PreTrainedModel) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fast_attention = model.config._attn_implementation
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=model, tokenizer=tokenizer,
                                               max_new_tokens=NEW_TOKENS, progress=False))
    assert model.config._attn_implementation == fast_attention  # the recording pass's eager attention is undone
    prompt_ids = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()
    assert store.token_ids == greedy
    for layer, truth in enumerate(output_attentions(eager_model, store.token_ids)):
        np.testing.assert_allclose(store.attention(layer), truth, rtol=FLOAT16_RELATIVE, atol=STORED_FLOAT16_ABSOLUTE)
    with pytest.raises(UsageError, match="tokenizer"):
        att_report.capture(PROMPT, tmp_path / "d", model=model)
    assert not (tmp_path / "d").exists()


def test_model_without_attention_weights_is_refused(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tiny_model("mamba")
    config_only = tmp_path / "config-only"  # refused from its config alone, before any weights would load
    config_only.mkdir()
    shutil.copy(folder / "config.json", config_only)
    loaded = {"model": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder)}
    for given in ({"model": str(folder)}, {"model": str(config_only)}, loaded):
        with pytest.raises(att_report.AttReportError, match="no attention") as raised:
            att_report.capture(PROMPT, tmp_path / "c", progress=False, **given)
        assert "use a transformer model" in str(raised.value)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["config-only"]
