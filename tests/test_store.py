"""The store format: damaged or foreign stores are refused with a message naming the file and the problem, and the
lower-triangle packing matches the layout the README specifies, element by element."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import att_report
from att_report.store import pack_layer, unpack_layer
from synthetic import write_synthetic_store

TOKENS = ["The", " cat", " sat", " on", " the", " mat"]
PROMPT_LENGTH = 4


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    write_synthetic_store(path, TOKENS, PROMPT_LENGTH)
    att_report.load(path)  # intact, before each test damages it
    return path


def edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        change(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    return damage


def truncate_layer(path: Path) -> None:
    layer = path / "attention" / "layer-001.npy"
    layer.write_bytes(layer.read_bytes()[:-10])


def flip_a_byte(path: Path) -> None:
    layer = path / "attention" / "layer-001.npy"
    data = bytearray(layer.read_bytes())
    data[-3] ^= 0x40  # inside the last weights: same size, different content
    layer.write_bytes(bytes(data))


def set_key(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest[section].__setitem__(key, value)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated layer file": (truncate_layer, r"layer-001\.npy has \d+ bytes, the manifest says \d+"),
    "wrong checksum": (flip_a_byte, r"layer-001\.npy does not match its sha256 checksum"),
    "missing layer file": (lambda path: (path / "attention" / "layer-001.npy").unlink(), r"layer-001\.npy is missing"),
    "missing manifest": (lambda path: (path / "manifest.json").unlink(), r"has no manifest\.json"),
    "not JSON": (lambda path: (path / "manifest.json").write_text("{not json", encoding="utf-8"),
                 r"manifest\.json is not valid JSON"),
    "foreign format": (edit_manifest(lambda manifest: manifest.update(format="other-tool")),
                       r"manifest\.json is not an att-report capture"),
    "newer version": (edit_manifest(lambda manifest: manifest.update(version=2)),
                      r"format version 2, newer than the 1 .*upgrade att-report"),
    "inconsistent token lists": (edit_manifest(lambda manifest: manifest["tokens"]["text"].pop()),
                                 r"manifest\.json has inconsistent 'tokens' lists"),
    "missing section": (edit_manifest(lambda manifest: manifest.pop("attention")),
                        r"manifest\.json lacks a valid 'attention'"),
    "layer count": (edit_manifest(set_key("model", "num_layers", 3)), r"lists 2 layer files for 3 layers"),
    "layer shape": (edit_manifest(set_key("model", "num_heads", 2)),
                    r"layer-000\.npy holds float16 \(3, 21\), expected float16 \(2, 21\)"),
    "not a directory": (lambda path: None, r"is not a directory"),
    "missing layer count": (edit_manifest(lambda manifest: manifest["model"].pop("num_layers")),
                            r"lacks a valid 'model\.num_layers'"),
    "missing prompt length": (edit_manifest(lambda manifest: manifest["tokens"].pop("prompt_length")),
                              r"lacks a valid 'tokens\.prompt_length'"),
    "head count not a number": (edit_manifest(set_key("model", "num_heads", "3")), r"lacks a valid 'model\.num_heads'"),
    "no layers": (edit_manifest(set_key("model", "num_layers", 0)), r"lacks a valid 'model\.num_layers'"),
    "token ids not a list": (edit_manifest(set_key("tokens", "ids", 5)), r"lacks a valid 'tokens\.ids'"),
    "causal not a boolean": (edit_manifest(set_key("model", "causal", None)), r"lacks a valid 'model\.causal'"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_store_is_refused_naming_the_problem(damage: str, store: Path) -> None:
    change, message = DAMAGES[damage]
    change(store)
    target = store / "manifest.json" if damage == "not a directory" else store
    with pytest.raises(att_report.AttReportError, match=message) as raised:
        att_report.load(target)
    assert str(target) in str(raised.value)


def test_checksums_are_skipped_only_when_asked(store: Path) -> None:
    flip_a_byte(store)
    assert att_report.load(store, verify=False).num_layers == 2


# Query i of head h holds keys 0..i; key j > i is the future, which packing drops.
HAND_LAYER = np.array([
    [[1, 9, 9], [11, 12, 9], [21, 22, 23]],
    [[101, 9, 9], [111, 112, 9], [121, 122, 123]],
], dtype=np.float32)
HAND_PACKED = np.array([[1, 11, 12, 21, 22, 23], [101, 111, 112, 121, 122, 123]], dtype=np.float32)


def test_pack_keeps_each_row_up_to_the_diagonal() -> None:
    packed = pack_layer(HAND_LAYER, causal=True, dtype="float32")
    np.testing.assert_array_equal(packed, HAND_PACKED)
    for head in range(2):
        for query in range(3):
            for key in range(query + 1):
                assert packed[head, query * (query + 1) // 2 + key] == HAND_LAYER[head, query, key]
    np.testing.assert_array_equal(unpack_layer(packed, causal=True, num_tokens=3), np.tril(HAND_LAYER))


def test_square_layers_are_stored_as_they_are() -> None:
    packed = pack_layer(HAND_LAYER, causal=False, dtype="float16")
    assert packed.dtype == np.float16 and packed.shape == HAND_LAYER.shape
    np.testing.assert_array_equal(unpack_layer(packed, causal=False, num_tokens=3), HAND_LAYER)


@pytest.mark.parametrize("causal", [True, False], ids=["lower-triangle", "square"])
def test_store_round_trip(causal: bool, tmp_path: Path) -> None:
    layers = write_synthetic_store(tmp_path / "s", TOKENS, PROMPT_LENGTH, causal=causal)  # float16, 3 heads
    opened = att_report.load(tmp_path / "s")
    size = len(TOKENS)
    for index, layer in enumerate(layers):
        stored = np.load(tmp_path / "s" / f"attention/layer-{index:03d}.npy")
        if causal:
            by_hand = np.array([np.concatenate([head[row, : row + 1] for row in range(size)]) for head in layer])
            assert stored.nbytes == 3 * size * (size + 1)  # the README's cost of a causal float16 layer
        else:
            by_hand = layer
        np.testing.assert_array_equal(stored, by_hand.astype(np.float16))
        assert opened.attention(index).dtype == np.float32
        np.testing.assert_array_equal(opened.attention(index), layer.astype(np.float16).astype(np.float32))
