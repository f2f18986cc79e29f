"""Capture-side analyses on a tiny random Llama: saliency, neuron activations, batch capture; encoder predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import att_report
from att_report.cli import main

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "attention is what the model looks at"] * 20


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def _word_piece_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = _byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_capture(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> att_report.CaptureStore:
    output = tmp_path_factory.mktemp("captures") / "llama"
    code = main(["capture", "--model", str(llama_dir), "--prompt", "the cat sat", "--completion", " on the mat",
                 "--saliency", "--neurons", "5", "--no-progress", "-o", str(output)])
    assert code == 0
    return att_report.load(output)


def _reference_model(folder: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float64).eval()


def test_saliency_matches_autograd(llama_dir: Path, llama_capture: att_report.CaptureStore) -> None:
    model = _reference_model(llama_dir)
    ids = torch.tensor([llama_capture.token_ids])
    start = llama_capture.prompt_length
    grad_norm, grad_x_input = llama_capture.saliency("grad_norm"), llama_capture.saliency("grad_x_input")
    assert llama_capture.manifest["saliency"]["rows"] == list(range(start, len(ids[0])))
    for row in range(start, len(ids[0])):
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        log_prob = torch.log_softmax(model(inputs_embeds=embeddings).logits[0, row - 1], -1)[ids[0, row]]
        (gradient,) = torch.autograd.grad(log_prob, embeddings)
        np.testing.assert_allclose(grad_norm[row, :row], gradient[0, :row].norm(dim=-1).numpy(), rtol=1e-3, atol=1e-5)
        expected = (gradient[0, :row] * embeddings[0, :row]).sum(-1).detach().numpy()
        np.testing.assert_allclose(grad_x_input[row, :row], expected, rtol=1e-3, atol=1e-5)
        assert not grad_norm[row, row:].any()
    assert not grad_norm[:start].any()


def test_saliency_matches_finite_difference(llama_dir: Path, llama_capture: att_report.CaptureStore) -> None:
    """Scale token j's embedding by (1 ± eps): the change of log p(token t) over 2 eps is gradient · embedding."""
    model = _reference_model(llama_dir)
    ids = torch.tensor([llama_capture.token_ids])
    row, column, eps = len(ids[0]) - 1, 1, 1e-3  # RMSNorm computes in float32: a smaller step drowns in rounding

    def log_prob(scale: float) -> float:
        embeddings = model.get_input_embeddings()(ids).detach().clone()
        embeddings[0, column] *= scale
        with torch.no_grad():
            return float(torch.log_softmax(model(inputs_embeds=embeddings).logits[0, row - 1], -1)[ids[0, row]])

    estimate = (log_prob(1 + eps) - log_prob(1 - eps)) / (2 * eps)
    assert llama_capture.saliency("grad_x_input")[row, column] == pytest.approx(estimate, rel=1e-2, abs=1e-5)


def test_neurons_match_output_hidden_states(llama_dir: Path, llama_capture: att_report.CaptureStore) -> None:
    model = _reference_model(llama_dir)
    model.config.tie_last_hidden_states = False  # the last layer's own output, before the final norm
    with torch.no_grad():
        hidden = model(torch.tensor([llama_capture.token_ids]), output_hidden_states=True).hidden_states
    units, values = llama_capture.neurons()
    assert units.shape == (2, 5) and values.shape == (2, llama_capture.num_tokens, 5)
    for layer in range(2):
        states = hidden[layer + 1][0].numpy()
        expected_units = np.argsort(-states.var(axis=0), kind="stable")[:5]
        assert list(units[layer]) == list(expected_units)
        np.testing.assert_allclose(values[layer], states[:, expected_units], rtol=1e-4, atol=1e-5)


def test_saliency_without_completion_explains_the_next_token(llama_dir: Path, tmp_path: Path) -> None:
    assert main(["capture", "--model", str(llama_dir), "--prompt", "the dog", "--max-new-tokens", "0",
                 "--saliency", "--no-progress", "-o", str(tmp_path / "c")]) == 0
    store = att_report.load(tmp_path / "c")
    model = _reference_model(llama_dir)
    with torch.no_grad():
        predicted = int(model(torch.tensor([store.token_ids])).logits[0, -1].argmax())
    last = store.num_tokens - 1
    assert store.manifest["saliency"]["rows"] == [last] and store.manifest["saliency"]["targets"] == [predicted]
    assert store.saliency()[last, : last + 1].all()


def test_batch_captures_each_line_and_reports_failures(llama_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the cat", "id": "cat"}\n{"prompt": ""}\nnot json\n'
                       '{"prompt": "a dog", "completion": " ran", "id": "dog"}\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "att_report", "capture", "--model", str(llama_dir), "--prompts-file", str(prompts),
         "--max-new-tokens", "3", "--no-progress", "-o", str(tmp_path / "out")],
        capture_output=True, text=True)
    assert result.returncode == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["cat", "dog"]
    assert f"{prompts}:2: the prompt is empty" in result.stderr and f"{prompts}:3: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    dog = att_report.load(tmp_path / "out" / "dog")
    assert "".join(dog.tokens[dog.prompt_length:]) == " ran"


def test_encoder_predictions_match_the_masked_lm_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = _word_piece_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    assert main(["capture", "--model", str(tmp_path / "bert"), "--prompt", "the cat [MASK] on the mat",
                 "--no-progress", "-o", str(tmp_path / "c")]) == 0
    store = att_report.load(tmp_path / "c")
    mask = store.token_ids.index(tokenizer.mask_token_id)
    assert store.manifest["predictions"]["positions"] == [mask] and not store.causal
    model = BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.tensor([store.token_ids])).logits[0, mask], -1)
    values, indices = probabilities.topk(5)
    stored = store.manifest["predictions"]["top"][0]
    assert [entry["id"] for entry in stored] == indices.tolist()
    np.testing.assert_allclose([entry["probability"] for entry in stored], values.numpy(), atol=1e-5)
