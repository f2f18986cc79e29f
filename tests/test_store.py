"""The store format: damaged or foreign stores are refused with a message naming the file and the problem, and the
lower-triangle packing matches the layout the README specifies, element by element."""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import att_report
from att_report.atomic import staged_directory
from att_report.capturing.streaming import block_stream
from att_report.cli import main
from att_report.store.codec import decode_chunk, diffuse, diffused_steps, encode_chunk, to_float16
from att_report.store import (
    COMPACT_FROM_TOKENS,
    LayerWriter,
    check_disk_space,
    pack_layer,
    projected_store_bytes,
    resolve_encoding,
    unpack_layer,
    write_array,
    write_manifest,
)
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


def escape_to(target: Callable[[Path], str]) -> Callable[[Path], None]:
    """Point layer 1's entry at a copy of its file outside the store, with the right size and checksum."""
    def damage(path: Path) -> None:
        outside = path.parent / "outside.npy"
        shutil.copy(path / "attention" / "layer-001.npy", outside)
        edit_manifest(lambda manifest: manifest["attention"]["files"][1].__setitem__("path", target(path)))(path)

    return damage


def symlink_layer(path: Path) -> None:
    layer = path / "attention" / "layer-001.npy"
    outside = path.parent / "outside.npy"
    shutil.move(layer, outside)
    layer.symlink_to(outside)


def symlink_directory(path: Path) -> None:
    shutil.move(path / "attention", path.parent / "elsewhere")
    (path / "attention").symlink_to(path.parent / "elsewhere")


def add_array(section: str, key: str, array: np.ndarray) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        entry = write_array(path, f"{section}/{key}.npy", array)
        edit_manifest(lambda manifest: manifest.setdefault(section, {}).__setitem__(key, entry))(path)

    return damage


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated layer file": (truncate_layer, r"layer-001\.npy has \d+ bytes, the manifest says \d+"),
    "wrong checksum": (flip_a_byte, r"layer-001\.npy does not match its sha256 checksum"),
    "missing layer file": (lambda path: (path / "attention" / "layer-001.npy").unlink(), r"layer-001\.npy is missing"),
    "missing manifest": (lambda path: (path / "manifest.json").unlink(), r"has no manifest\.json"),
    "not JSON": (lambda path: (path / "manifest.json").write_text("{not json", encoding="utf-8"),
                 r"manifest\.json is not valid JSON"),
    "foreign format": (edit_manifest(lambda manifest: manifest.update(format="other-tool")),
                       r"manifest\.json is not an att-report capture"),
    "newer version": (edit_manifest(lambda manifest: manifest.update(version=3)),
                      r"format version 3, newer than the 2 .*upgrade att-report"),
    "inconsistent token lists": (edit_manifest(lambda manifest: manifest["tokens"]["text"].pop()),
                                 r"manifest\.json has inconsistent 'tokens' lists"),
    "missing section": (edit_manifest(lambda manifest: manifest.pop("attention")),
                        r"manifest\.json lacks a valid 'attention'"),
    "layer count": (edit_manifest(lambda manifest: manifest["attention"]["files"].pop()),
                    r"lists 1 layer files for 2 layers"),
    "layer shape": (edit_manifest(set_key("attention", "head_indices", [0, 1])),
                    r"layer-000\.npy holds float16 \(3, 21\), expected float16 \(2, 21\)"),
    "manifest given": (lambda path: None, r"is a capture's manifest; give the capture directory that holds it, /"),
    "missing layer count": (edit_manifest(lambda manifest: manifest["model"].pop("num_layers")),
                            r"lacks a valid 'model\.num_layers'"),
    "missing prompt length": (edit_manifest(lambda manifest: manifest["tokens"].pop("prompt_length")),
                              r"lacks a valid 'tokens\.prompt_length'"),
    "head count not a number": (edit_manifest(set_key("model", "num_heads", "3")), r"lacks a valid 'model\.num_heads'"),
    "no layers": (edit_manifest(set_key("model", "num_layers", 0)), r"lacks a valid 'model\.num_layers'"),
    "token ids not a list": (edit_manifest(set_key("tokens", "ids", 5)), r"lacks a valid 'tokens\.ids'"),
    "causal not a boolean": (edit_manifest(set_key("model", "causal", None)), r"lacks a valid 'model\.causal'"),
    "token count": (edit_manifest(set_key("attention", "num_tokens", 7)),
                    r"has 'attention\.num_tokens' 7 for 6 tokens"),
    "unknown encoding": (edit_manifest(set_key("attention", "encoding", "int4")),
                         r"uses attention encoding 'int4', which this att-report does not read"),
    "layer beyond the model": (edit_manifest(set_key("attention", "layer_indices", [0, 2])),
                               r"has 'attention\.layer_indices' \[0, 2\], not ascending indices below 2"),
    "heads out of order": (edit_manifest(set_key("attention", "head_indices", [2, 0, 1])),
                           r"has 'attention\.head_indices' \[2, 0, 1\], not ascending"),
    "file of another layer": (edit_manifest(lambda manifest: manifest["attention"]["files"][1].update(layer=5)),
                              r"'attention\.files' whose 'layer' values differ"),
    "metrics of another shape": (edit_manifest(lambda manifest: manifest["attention"]["metrics"]["values"].pop()),
                                 r"has 'attention\.metrics' that are not 2 layers x 3 heads x 8 metrics"),
    "path escapes upwards": (escape_to(lambda path: "attention/../../outside.npy"),
                             r"names layer file 'attention/\.\./\.\./outside\.npy', outside the store"),
    "absolute path": (escape_to(lambda path: str(path.parent / "outside.npy")),
                      r"names layer file '/.*outside\.npy', outside the store"),
    "path with a NUL": (escape_to(lambda path: "attention/layer-001.npy\x00.txt"),
                        r"names layer file 'attention/layer-001\.npy\\x00\.txt', outside the store"),
    "symlinked layer file": (symlink_layer, r"layer file .*layer-001\.npy is a symbolic link"),
    "symlinked directory": (symlink_directory, r"layer file .*attention is a symbolic link"),
    "saliency of another shape": (add_array("saliency", "grad_norm", np.zeros((6, 5), np.float32)),
                                  r"lists a saliency grad_norm of shape \(6, 5\), expected \(6, 6\)"),
    "neurons without values": (add_array("neurons", "units", np.zeros((2, 4), np.int32)),
                               r"lists only one of 'neurons\.units' and 'neurons\.values'"),
    "neurons of another shape": (lambda path: [add_array("neurons", "units", np.zeros((2, 4), np.int32))(path),
                                               add_array("neurons", "values", np.zeros((2, 6, 3), np.float32))(path)],
                                 r"lists neurons of shapes \(2, 4\) and \(2, 6, 3\), expected \(layers, K\)"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_store_is_refused_naming_the_problem(damage: str, store: Path) -> None:
    change, message = DAMAGES[damage]
    change(store)
    target = store / "manifest.json" if damage == "manifest given" else store
    with pytest.raises(att_report.AttReportError, match=message) as raised:
        att_report.load(target)
    assert str(target) in str(raised.value)


def test_a_report_a_file_or_nothing_is_refused_in_one_line_naming_the_fix(store: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert main(["render", str(store), "-o", str(report)]) == 0
    note = tmp_path / "notes.txt"
    note.write_text("not a capture", encoding="utf-8")
    expected = {
        report: r"is an att-report report, not a capture; load\(\) and every command take the capture directory the "
                r"report was rendered from",
        report / "index.html": r"is an HTML file, not a capture; load\(\) and every command take the capture directory",
        note: r"is a file, not a capture directory; give the capture directory, the one `att-report capture -o`",
        tmp_path / "missing.html": r"does not exist; give the capture directory, the one `att-report capture -o` wrote",
    }
    for path, message in expected.items():
        with pytest.raises(att_report.AttReportError, match=message) as raised:
            att_report.load(path)
        assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_a_store_shows_itself_in_one_line(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "all", TOKENS, PROMPT_LENGTH)
    write_synthetic_store(tmp_path / "some", TOKENS, PROMPT_LENGTH, num_layers=4, layer_indices=[1, 3],
                          head_indices=[0, 2], dtype="uint8")
    assert repr(att_report.load(tmp_path / "all")) == (
        f"<CaptureStore {str(tmp_path / 'all')!r} synthetic, 2 layers x 3 heads, 6 tokens, float16>")
    assert repr(att_report.load(tmp_path / "some")) == (
        f"<CaptureStore {str(tmp_path / 'some')!r} synthetic, 2 layers x 2 heads of 4 x 3, 6 tokens, uint8-diffused>")


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


# ---------------------------------------------------------------------------------------------------------------
# Version 2: encodings, scope, slices, the writer's contract, size.

ENCODINGS = ["float32", "float16", "uint8"]


def whole(layer: np.ndarray, causal: bool) -> np.ndarray:
    """What a store of these weights holds: nothing above a causal diagonal."""
    return np.tril(layer) if causal else layer


@pytest.mark.parametrize("dtype", ENCODINGS)
@pytest.mark.parametrize("causal", [True, False], ids=["lower-triangle", "square"])
def test_reader_slices_equal_the_full_array(tmp_path: Path, dtype: str, causal: bool) -> None:
    tokens = [f"t{i}" for i in range(150)]  # three row blocks, the last one short
    write_synthetic_store(tmp_path / "s", tokens, 140, num_heads=4, causal=causal, dtype=dtype)
    store = att_report.load(tmp_path / "s")
    full = store.attention(1)
    assert full.shape == (4, 150, 150) and full.dtype == np.float32
    for heads, rows in [([2, 0], slice(5, 140, 7)), (None, [149, 0, 64, 63]), ([3], slice(None)), ([1, 2], 70)]:
        picked = full[heads if heads is not None else slice(None)]
        expected = picked[:, rows] if not isinstance(rows, int) else picked[:, [rows]]
        np.testing.assert_array_equal(store.attention(1, heads=heads, rows=rows), expected)
    with pytest.raises(att_report.AttReportError, match=r"rows \[150\] are out of range; .* rows 0 to 149"):
        store.attention(1, rows=[150])


@pytest.mark.parametrize("dtype", ENCODINGS)
def test_scope_stores_only_the_chosen_layers_and_heads(tmp_path: Path, dtype: str) -> None:
    layers = write_synthetic_store(tmp_path / "s", TOKENS, PROMPT_LENGTH, num_layers=6, num_heads=5, dtype=dtype,
                                   layer_indices=[1, 4, 5], head_indices=[0, 3])
    store = att_report.load(tmp_path / "s")
    assert (store.num_layers, store.num_heads) == (6, 5)
    assert store.layer_indices == [1, 4, 5] and store.head_indices == [0, 3]
    for layer, written in zip([1, 4, 5], layers):
        np.testing.assert_allclose(store.attention(layer), whole(written, True), atol=store.encoding.weight_bound)
        np.testing.assert_array_equal(store.attention(layer, heads=[3]), store.attention(layer)[[1]])
    assert [len(layer) for layer in store.layers()] == [2, 2, 2]
    with pytest.raises(att_report.AttReportError, match=r"layer 2 is not stored in .*; it holds layers 1, 4-5"):
        store.attention(2)
    with pytest.raises(att_report.AttReportError, match=r"head 1 is not stored in .*; it holds heads 0, 3"):
        store.attention(4, heads=[1])
    assert att_report.head_metrics(store).shape == (3, 2)


def write_version_1(path: Path, layers: list[np.ndarray], causal: bool) -> None:
    """A version-1 store as the first att-report wrote it: the README's v1 layout, built here by hand."""
    (path / "attention").mkdir(parents=True)
    files = []
    for index, layer in enumerate(layers):
        relative = f"attention/layer-{index:03d}.npy"
        np.save(path / relative, pack_layer(layer, causal, "float16"))
        data = (path / relative).read_bytes()
        files.append({"path": relative, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    size = layers[0].shape[-1]
    manifest = {
        "format": "att-report-capture", "version": 1,
        "model": {"name": "v1", "num_layers": len(layers), "num_heads": layers[0].shape[0], "causal": causal},
        "tokens": {"ids": list(range(size)), "text": [f"t{i}" for i in range(size)], "special": [False] * size,
                   "prompt_length": size},
        "attention": {"dtype": "float16", "layout": "lower-triangle" if causal else "square", "files": files},
        "generation": {}, "completion": {}, "software": {}, "timings": {},
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize("causal", [True, False], ids=["lower-triangle", "square"])
def test_version_1_stores_still_load(tmp_path: Path, causal: bool) -> None:
    rng = np.random.default_rng(2)
    layers = [rng.dirichlet(np.ones(70), size=(2, 70)).astype(np.float32) for _ in range(2)]
    write_version_1(tmp_path / "v1", layers, causal)
    store = att_report.load(tmp_path / "v1")
    assert store.version == 1 and store.layer_indices == [0, 1] and store.head_indices == [0, 1]
    assert store.encoding.name == "float16" and store.attention_dtype == "float16"
    for index, layer in enumerate(layers):
        expected = whole(layer, causal).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(store.attention(index), expected)
        np.testing.assert_array_equal(store.attention(index, heads=[1], rows=slice(60, 70)), expected[[1], 60:])
    metrics = att_report.head_metrics(store)
    assert metrics.source.startswith("measured from the stored weights (float16")


def write_in_blocks(path: Path, layer: np.ndarray, dtype: str, causal: bool,
                    blocks: list[tuple[int, int, int, int]]) -> att_report.CaptureStore:
    """Write one layer through write_block as (head_start, head_stop, row_start, row_stop) pieces."""
    with staged_directory(path) as staging:
        writer = LayerWriter(staging, layer.shape[0], layer.shape[-1], causal, dtype)
        for head_start, head_stop, row_start, row_stop in blocks:
            writer.write_block(7, head_start, row_start, layer[head_start:head_stop, row_start:row_stop])
        writer.finish_layer(7)
        write_manifest(staging, minimal_manifest(writer, layer.shape[-1], causal))
    return att_report.load(path)


def minimal_manifest(writer: LayerWriter, size: int, causal: bool) -> dict[str, Any]:
    return {
        "model": {"name": "blocks", "num_layers": 8, "num_heads": writer.num_heads, "causal": causal},
        "tokens": {"ids": list(range(size)), "text": ["x"] * size, "special": [False] * size, "prompt_length": size},
        "attention": writer.attention_section(), "generation": {}, "completion": {}, "software": {}, "timings": {},
    }


@pytest.mark.parametrize("dtype", ENCODINGS)
@pytest.mark.parametrize("causal", [True, False], ids=["lower-triangle", "square"])
def test_blocks_in_any_head_order_and_row_split_store_the_same(tmp_path: Path, dtype: str, causal: bool) -> None:
    rng = np.random.default_rng(1)
    layer = rng.dirichlet(np.full(140, 0.1), size=(4, 140)).astype(np.float32)
    at_once = write_in_blocks(tmp_path / "a", layer, dtype, causal, [(0, 4, 0, 140)])
    pieces = [(2, 4, 0, 30), (0, 2, 0, 64), (2, 4, 30, 100), (0, 2, 64, 65), (0, 2, 65, 140), (2, 4, 100, 140)]
    in_pieces = write_in_blocks(tmp_path / "b", layer, dtype, causal, pieces)
    assert at_once.layer_indices == [7]
    np.testing.assert_array_equal(in_pieces.attention(7), at_once.attention(7))
    np.testing.assert_allclose(at_once.attention(7), whole(layer, causal), atol=at_once.encoding.weight_bound)
    np.testing.assert_allclose(in_pieces.manifest["attention"]["metrics"]["values"],
                               at_once.manifest["attention"]["metrics"]["values"], rtol=1e-6)  # summed in another order


@pytest.mark.parametrize("dtype", ENCODINGS)
def test_a_store_ended_early_equals_one_written_for_its_length(tmp_path: Path, dtype: str) -> None:
    """What generation does: a writer opened for the token limit (200) takes a prompt block, then one row per
    token through the capture's block stream, and ends at 150; its files are the bytes of a writer opened for 150."""
    rng = np.random.default_rng(3)
    length, limit = 150, 200
    layer = np.tril(rng.dirichlet(np.full(length, 0.1), size=(3, length))).astype(np.float32)
    for_length = write_in_blocks(tmp_path / "known", layer, dtype, True, [(0, 3, 0, length)])
    with staged_directory(tmp_path / "ended") as staging:
        writer = LayerWriter(staging, 3, limit, True, dtype)
        with block_stream(writer, [0, 1, 2]) as stream:
            stream(7, [0, 1, 2], 0, torch.from_numpy(layer[:, :70, :70]))  # the prompt, ending inside a row block
            for row in range(70, length):
                stream(7, [0, 1, 2], row, torch.from_numpy(layer[:, row:row + 1, :row + 1]))
            stream.end_at(length)
        write_manifest(staging, minimal_manifest(writer, length, True))
    ended = att_report.load(tmp_path / "ended")
    assert ended.num_tokens == length and ended.encoding == for_length.encoding
    for mine, theirs in zip(ended.manifest["attention"]["files"], for_length.manifest["attention"]["files"]):
        assert mine["sha256"] == theirs["sha256"] and mine.get("index") == theirs.get("index")
    np.testing.assert_allclose(ended.manifest["attention"]["metrics"]["values"],
                               for_length.manifest["attention"]["metrics"]["values"], rtol=1e-6)


def test_only_an_open_causal_store_ends_early(tmp_path: Path) -> None:
    square = LayerWriter(tmp_path / "square", 1, 8, False, "float16")
    with pytest.raises(att_report.AttReportError, match="only a causal store whose layers are all still open"):
        square.end_at(4)
    causal = LayerWriter(tmp_path / "causal", 1, 8, True, "float16")
    causal.write_block(0, 0, 0, np.full((1, 6, 6), 0.1, np.float32))
    with pytest.raises(att_report.AttReportError, match="layer 0 holds rows past token 4"):
        causal.end_at(4)


WRITER_MISUSE: dict[str, tuple[list[tuple[int, int, int, int]], str]] = {
    "a row twice": ([(0, 2, 0, 10), (0, 2, 5, 10)], r"layer 7: heads 0-1 expected row 10 next, got row 5"),
    "rows skipped": ([(0, 2, 0, 5), (0, 2, 8, 10)], r"expected row 5 next, got row 8"),
    "a head that is not stored": ([(0, 3, 0, 10)], r"a block of shape \(3, 10, 10\)|heads 0-2 are not among"),
    "a layer left incomplete": ([(0, 1, 0, 10)], r"layer 7 is not complete"),
}


@pytest.mark.parametrize("misuse", WRITER_MISUSE)
def test_writer_refuses_blocks_that_break_its_contract(tmp_path: Path, misuse: str) -> None:
    pieces, message = WRITER_MISUSE[misuse]
    layer = np.full((3, 10, 10), 0.1, dtype=np.float32)
    writer = LayerWriter(tmp_path, 2, 10, True, "uint8")
    with pytest.raises(att_report.AttReportError, match=message):
        for head_start, head_stop, row_start, row_stop in pieces:
            writer.write_block(7, head_start, row_start, layer[head_start:head_stop, row_start:row_stop])
        writer.finish_layer(7)


def test_writer_refuses_a_layer_outside_its_scope_and_weights_that_are_not_numbers(tmp_path: Path) -> None:
    writer = LayerWriter(tmp_path, 2, 4, True, "float16", layer_indices=[0, 3])
    with pytest.raises(att_report.AttReportError, match=r"layer 1 is not among the layers to store, \[0, 3\]"):
        writer.write_block(1, 0, 0, np.zeros((2, 4, 4), np.float32))
    writer.write_block(3, 0, 0, np.full((2, 4, 4), np.nan, np.float32))
    with pytest.raises(att_report.AttReportError, match=r"layer 3's attention weights include NaN"):
        writer.finish_layer(3)
    with pytest.raises(att_report.AttReportError, match=r"not storable; use one of auto, float16, float32, uint8"):
        LayerWriter(tmp_path, 2, 4, True, "int4")


def test_auto_is_float16_below_the_switch_and_compact_from_it() -> None:
    assert resolve_encoding("auto", COMPACT_FROM_TOKENS - 1).name == "float16"
    assert resolve_encoding("auto", COMPACT_FROM_TOKENS).name == "uint8-diffused"
    assert resolve_encoding("uint8", 10).name == "uint8-diffused"


@pytest.mark.parametrize("dtype", ENCODINGS)
def test_projected_size_is_exact_or_on_the_large_side(tmp_path: Path, dtype: str) -> None:
    tokens = [f"t{i}" for i in range(300)]
    write_synthetic_store(tmp_path / "s", tokens, 290, num_layers=2, num_heads=3, dtype=dtype)
    store = att_report.load(tmp_path / "s")
    written = sum(entry["bytes"] + (entry.get("index") or {}).get("bytes", 0)
                  for entry in store.manifest["attention"]["files"])
    projected = projected_store_bytes(2, 3, 300, True, dtype)
    if dtype == "uint8":
        assert written <= projected
    else:
        assert projected == written


def test_a_disk_without_room_is_refused_with_the_numbers(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_disk_space(tmp_path / "not" / "yet", free // 2)
    with pytest.raises(att_report.AttReportError, match=r"needs about .* GB but .* has .* free; free some space"):
        check_disk_space(tmp_path / "not" / "yet", free + 10**12)


def test_writer_never_holds_a_layer(tmp_path: Path) -> None:
    """A 2,048-token causal layer of 4 heads written in blocks of 8 rows: the writer's own allocations stay far
    below the layer's float16 form (the v1 writer assembled it whole: 16.8 MB here)."""
    size, heads = 2048, 4
    rng = np.random.default_rng(0)
    blocks = [rng.dirichlet(np.full(size, 0.05), size=(heads, 8)).astype(np.float32) for _ in range(4)]
    for dtype in ("uint8", "float16"):
        writer = LayerWriter(tmp_path / dtype, heads, size, True, dtype)
        tracemalloc.start()
        for start in range(0, size, 8):
            writer.write_block(0, 0, start, blocks[start // 8 % 4])
        writer.finish_layer(0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < heads * size * (size + 1) // 4, (dtype, peak)  # a quarter of the float16 layer


@pytest.mark.parametrize("size", [0, 5, 8, 4093, 65536])
def test_chunks_round_trip_sparse_and_dense(size: int) -> None:
    """Chunks of rare and of dense non-zero bytes, of any length, decode to the cells they were made of."""
    rng = np.random.default_rng(size)
    for share in (0.001, 0.03, 0.5, 1.0):
        cells = np.where(rng.random(size) < share, rng.integers(1, 256, size), 0).astype(np.uint8)
        positions = np.flatnonzero(cells)
        np.testing.assert_array_equal(decode_chunk(encode_chunk(positions, cells[positions]), size, "chunk"), cells)


def _diffused_by_hand(rows: np.ndarray) -> np.ndarray:
    """The module's definition, one long float64 running sum per row: q_j = Q_j - Q_(j-1), Q_j = floor(255 P_j + 1/2)."""
    running = np.floor(np.cumsum(rows, axis=-1, dtype=np.float64) * 255 + 0.5)
    return np.diff(running, axis=-1, prepend=0).astype(np.uint8)


@pytest.mark.parametrize("keys", [1, 7, 64, 65, 200, 1000])
def test_segmented_diffusion_gives_the_bytes_of_one_running_sum(keys: int) -> None:
    """Diffusing 64 keys at a time gives the bytes of the plain definition: for rows spread thin, peaked, causal
    (zero after the diagonal) and all zero."""
    rng = np.random.default_rng(keys)
    spread = rng.random((6, keys)) ** 8
    peaked = np.exp(rng.normal(0, 4, (6, keys)))
    causal = np.tril(rng.random((6, keys)) ** 4, k=keys // 2)
    rows = np.concatenate([spread, peaked, causal, np.zeros((1, keys))])
    rows = (rows / np.maximum(rows.sum(axis=1, keepdims=True), 1e-30)).astype(np.float32)
    np.testing.assert_array_equal(diffuse(rows), _diffused_by_hand(rows))
    row, key, steps = diffused_steps(rows)
    assert (steps > 0).all() and (np.diff(row * keys + key) > 0).all()  # non-zero bytes, in row-major order
    last_weight = np.array([np.flatnonzero(values).max(initial=-1) for values in rows])
    assert (key <= last_weight[row]).all()  # no byte after a row's last weight: a causal row keeps to its cells


def test_diffusing_rows_a_block_at_a_time_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffused_steps takes DIFFUSED_CELLS cells of rows at a time: blocks of two rows give the bytes of one."""
    rows = np.random.default_rng(2).dirichlet(np.full(300, 0.05), size=9).astype(np.float32)
    whole = diffused_steps(rows)
    monkeypatch.setattr("att_report.store.codec.DIFFUSED_CELLS", 600)
    for blocked, expected in zip(diffused_steps(rows), whole):
        np.testing.assert_array_equal(blocked, expected)


def test_fast_float16_rounding_equals_numpy_bit_for_bit() -> None:
    """The writer's float16 conversion (fast for subnormals) against numpy's own, at the halves where rounding
    to even decides, across every exponent a weight can have."""
    rng = np.random.default_rng(0)
    halves = (np.arange(0, 2048) + 0.5) * 2.0**-24  # exactly between two float16 subnormals
    values = np.concatenate([rng.uniform(0, 1, 20000), np.exp(rng.uniform(-40, 0, 20000)), halves,
                             [0.0, 2.0**-24, 2.0**-25, 2.0**-14, 2.0**-14 * (1 - 2.0**-12), 1.0, 1e-30]])
    values = values.astype(np.float32)
    np.testing.assert_array_equal(to_float16(values).view(np.uint16), values.astype(np.float16).view(np.uint16))


@pytest.fixture
def compact(tmp_path: Path) -> Path:
    path = tmp_path / "compact"
    write_synthetic_store(path, [f"t{i}" for i in range(100)], 90, dtype="uint8")  # two row blocks
    att_report.load(path)
    return path


def replace_index(change: Callable[[np.ndarray], None], replacement: np.ndarray | None = None
                  ) -> Callable[[Path], None]:
    """Rewrite layer 1's chunk index (changed, or replaced whole), checksum and all, so only its content is wrong."""
    def damage(path: Path) -> None:
        index = np.load(path / "attention" / "layer-001.index.npy") if replacement is None else replacement
        change(index)
        entry = write_array(path, "attention/layer-001.index.npy", index)
        edit_manifest(lambda manifest: manifest["attention"]["files"][1].update(index=entry))(path)

    return damage


COMPACT_DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "chunk beyond the file": (replace_index(lambda index: index.__setitem__((2, 1, 0), 10**6)),
                              r"layer index .*layer-001\.index\.npy points outside its layer file"),
    "chunk index of another shape": (replace_index(lambda index: None, np.zeros((3, 1, 2), np.int64)),
                                     r"holds int64 \(3, 1, 2\), expected int64 \(3, 2, 2\)"),
    "missing chunk index": (edit_manifest(lambda manifest: manifest["attention"]["files"][1].pop("index")),
                            r"has a layer index entry without a path"),
    "other row blocks": (edit_manifest(set_key("attention", "row_block", 32)),
                         r"has 'attention\.row_block' 32; this att-report reads blocks of 64 rows"),
}


@pytest.mark.parametrize("damage", COMPACT_DAMAGES)
def test_damaged_compact_store_is_refused_naming_the_problem(damage: str, compact: Path) -> None:
    change, message = COMPACT_DAMAGES[damage]
    change(compact)
    with pytest.raises(att_report.AttReportError, match=message):
        att_report.load(compact)


def test_a_damaged_chunk_read_without_checksums_is_named(compact: Path) -> None:
    index = np.load(compact / "attention" / "layer-001.index.npy")
    offset, length = index[1, 0]
    layer = compact / "attention" / "layer-001.bin"
    data = bytearray(layer.read_bytes())
    data[offset + length // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(att_report.AttReportError, match=r"layer-001\.bin does not match its sha256"):
        att_report.load(compact)
    store = att_report.load(compact, verify=False)
    store.attention(1, heads=[0, 2])  # the other chunks still read
    with pytest.raises(att_report.AttReportError, match=r"layer-001\.bin chunk of stored head 1, rows 0-63 (is not a "
                                                        r"valid zlib stream|does not decode to its 2080 weights)"):
        store.attention(1, heads=[1], rows=[3])
