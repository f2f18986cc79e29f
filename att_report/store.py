"""The capture store: the one boundary between capture and render.

A store is a directory holding `manifest.json` and one `.npy` file per layer. It is written under a temporary name
and renamed when complete (see `atomic.staged_directory`), and read here without torch. The format is specified in
the README section "The capture store"; every change to it bumps FORMAT_VERSION.

FORMAT_VERSION history:
  1 - first version: float16/float32 attention, causal layers packed as their lower triangle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from att_report.errors import StoreError

FORMAT_NAME = "att-report-capture"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LAYER_DIR = "attention"
LAYOUT_LOWER_TRIANGLE = "lower-triangle"
LAYOUT_SQUARE = "square"
ATTENTION_DTYPES = ("float16", "float32")
_HASH_CHUNK = 1 << 22
# Optional arrays beside the attention: (manifest section, key) of each, written only when asked for at capture.
EXTRA_ARRAYS = (("neurons", "units"), ("neurons", "values"), ("saliency", "grad_norm"), ("saliency", "grad_x_input"))

REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "model": dict,
    "tokens": dict,
    "attention": dict,
    "generation": dict,
    "completion": dict,
    "software": dict,
    "timings": dict,
}
# Fields inside the sections that the reader relies on, with their type (every integer among them is at least 1).
REQUIRED_FIELDS: dict[tuple[str, str], type] = {
    ("model", "name"): str,
    ("model", "num_layers"): int,
    ("model", "num_heads"): int,
    ("model", "causal"): bool,
    ("tokens", "ids"): list,
    ("tokens", "text"): list,
    ("tokens", "special"): list,
    ("tokens", "prompt_length"): int,
    ("attention", "files"): list,
}


def layer_file_name(layer: int) -> str:
    """Name the file of one layer, zero-padded so that a directory listing sorts by layer."""
    return f"{LAYER_DIR}/layer-{layer:03d}.npy"


@lru_cache(maxsize=4)
def lower_triangle_mask(size: int) -> np.ndarray:
    """Select the lower triangle, diagonal included; boolean indexing walks it row by row."""
    return np.tri(size, dtype=bool)


def pack_layer(attention: np.ndarray, causal: bool, dtype: str) -> np.ndarray:
    """Turn a (heads, T, T) layer into its stored form: the lower triangle of each head for causal models."""
    if causal:
        attention = attention[:, lower_triangle_mask(attention.shape[-1])]
    return np.ascontiguousarray(attention, dtype=np.dtype(dtype))


def unpack_layer(stored: np.ndarray, causal: bool, num_tokens: int) -> np.ndarray:
    """Invert `pack_layer` into a float32 (heads, T, T) array; the upper triangle of a causal layer is zero."""
    if not causal:
        return stored.astype(np.float32)
    square = np.zeros((stored.shape[0], num_tokens, num_tokens), dtype=np.float32)
    square[:, lower_triangle_mask(num_tokens)] = stored
    return square


def stored_shape(num_heads: int, num_tokens: int, causal: bool) -> tuple[int, ...]:
    """Give the shape a layer file must have."""
    if causal:
        return (num_heads, num_tokens * (num_tokens + 1) // 2)
    return (num_heads, num_tokens, num_tokens)


def sha256_of(path: Path) -> str:
    """Hash a file in chunks, so a multi-gigabyte layer never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_array(directory: Path, relative: str, array: np.ndarray) -> dict[str, Any]:
    """Save one .npy file inside a store and describe it (path, checksum, size) for the manifest."""
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        hashing = _HashingFile(handle)
        np.save(hashing, np.ascontiguousarray(array), allow_pickle=False)
    return {"path": relative, "sha256": hashing.digest.hexdigest(), "bytes": path.stat().st_size}


class _HashingFile:
    """A write-only file that hashes what passes through, so a layer is never read back just to checksum it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return int(self.handle.write(data))


class LayerWriter:
    """Write the layers of one store, in order, into a staging directory, recording each file's checksum."""

    def __init__(self, directory: Path, num_heads: int, num_tokens: int, causal: bool, dtype: str) -> None:
        if dtype not in ATTENTION_DTYPES:
            raise StoreError(f"attention dtype {dtype!r} is not storable; use one of {', '.join(ATTENTION_DTYPES)}.")
        self.directory = directory
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.causal = causal
        self.dtype = dtype
        self.files: list[dict[str, Any]] = []
        self._open: np.ndarray | None = None
        (directory / LAYER_DIR).mkdir(parents=True, exist_ok=True)

    def write(self, attention: np.ndarray) -> None:
        """Store the next layer, given as (heads, T, T)."""
        expected = (self.num_heads, self.num_tokens, self.num_tokens)
        if attention.shape != expected:
            raise StoreError(f"layer {len(self.files)} has shape {attention.shape}, expected {expected}.")
        self.write_packed(pack_layer(attention, self.causal, self.dtype))

    def write_packed(self, packed: np.ndarray) -> None:
        """Store the next layer, already in its stored form (capture packs on the model's device, faster)."""
        expected = stored_shape(self.num_heads, self.num_tokens, self.causal)
        if packed.shape != expected or packed.dtype != np.dtype(self.dtype):
            raise StoreError(f"layer {len(self.files)} is {packed.dtype} {packed.shape}, expected {self.dtype} {expected}.")
        self.files.append(write_array(self.directory, layer_file_name(len(self.files)), packed))

    def write_block(self, layer: int, head_start: int, row_start: int, weights: np.ndarray) -> None:
        """Store float32 weights (h, r, T) of stored heads head_start.. and query rows row_start.. of `layer`.

        The capture writes each layer as blocks covering every (head, row) once; `finish_layer` closes it."""
        if layer != len(self.files):
            raise StoreError(f"layer {layer} was written after {len(self.files)} layers; write layers in order.")
        if self._open is None:
            self._open = np.zeros(stored_shape(self.num_heads, self.num_tokens, self.causal), np.dtype(self.dtype))
        heads = slice(head_start, head_start + weights.shape[0])
        for offset in range(weights.shape[1]):
            row = row_start + offset
            if self.causal:
                start = row * (row + 1) // 2
                self._open[heads, start : start + row + 1] = weights[:, offset, : row + 1]
            else:
                self._open[heads, row] = weights[:, offset]

    def finish_layer(self, layer: int) -> None:
        """Write the layer assembled by `write_block` to its file."""
        if self._open is None or layer != len(self.files):
            raise StoreError(f"layer {layer} has no blocks to finish.")
        packed, self._open = self._open, None
        self.write_packed(packed)

    def attention_section(self) -> dict[str, Any]:
        """Describe the written layers for the manifest."""
        return {
            "dtype": self.dtype,
            "layout": LAYOUT_LOWER_TRIANGLE if self.causal else LAYOUT_SQUARE,
            "num_tokens": self.num_tokens,
            "files": self.files,
        }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest with sorted keys, so the same capture always gives the same bytes."""
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
    (directory / MANIFEST_NAME).write_bytes(orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))


def is_store(path: Path) -> bool:
    """Tell whether `path` looks like a store of ours (used before replacing it)."""
    try:
        return orjson.loads((path / MANIFEST_NAME).read_bytes()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class CaptureStore:
    """An opened store: the reader API of DESIGN.md. Layers are read memory-mapped, one at a time."""

    path: Path
    manifest: dict[str, Any]

    @property
    def num_layers(self) -> int:
        return int(self.manifest["model"]["num_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.manifest["model"]["num_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.manifest["model"].get("num_kv_heads") or self.num_heads)

    @property
    def causal(self) -> bool:
        return bool(self.manifest["model"]["causal"])

    @property
    def tokens(self) -> list[str]:
        return list(self.manifest["tokens"]["text"])

    @property
    def token_ids(self) -> list[int]:
        return list(self.manifest["tokens"]["ids"])

    @property
    def special(self) -> list[bool]:
        return list(self.manifest["tokens"]["special"])

    @property
    def prompt_length(self) -> int:
        return int(self.manifest["tokens"]["prompt_length"])

    @property
    def num_tokens(self) -> int:
        return len(self.manifest["tokens"]["ids"])

    @property
    def attention_dtype(self) -> str:
        return str(self.manifest["attention"]["dtype"])

    def _repr_html_(self) -> str:
        """Show the report inline when a store is the last expression of a Jupyter cell."""
        from att_report.report.notebook import store_html  # the report package builds on the store, not the reverse

        return store_html(self)

    def stored_layer(self, layer: int) -> np.ndarray:
        """Open one layer as stored (packed, float16 or float32), memory-mapped."""
        self._check_layer_index(layer)
        entry = self.manifest["attention"]["files"][layer]
        return np.load(self.path / entry["path"], mmap_mode="r", allow_pickle=False)

    @property
    def layer_indices(self) -> list[int]:
        """The model's layers this store holds, in stored order."""
        return list(range(self.num_layers))

    @property
    def head_indices(self) -> list[int]:
        """The model's query heads this store holds for every stored layer, in stored order."""
        return list(range(self.num_heads))

    def attention(self, layer: int, heads: Sequence[int] | None = None, rows: slice | Sequence[int] | None = None
                  ) -> np.ndarray:
        """Return float32 (heads, rows, T) for the model's `layer`: the given heads (model head indices, default all
        stored) and query rows (a slice or indices, default all), reading only those rows of the stored form."""
        stored = self.stored_layer(layer)
        head_positions = list(range(stored.shape[0])) if heads is None else [self._head_position(h) for h in heads]
        row_list = np.arange(self.num_tokens)[rows if rows is not None else slice(None)]
        size = self.num_tokens
        result = np.zeros((len(head_positions), len(row_list), size), dtype=np.float32)
        for out_row, row in enumerate(row_list.tolist()):
            if self.causal:
                start = row * (row + 1) // 2
                result[:, out_row, : row + 1] = stored[head_positions, start : start + row + 1]
            else:
                result[:, out_row] = stored[head_positions, row]
        return result

    def _head_position(self, head: int) -> int:
        if head not in self.head_indices:
            raise StoreError(f"head {head} is not stored in {self.path}; it holds heads {self.head_indices}.")
        return self.head_indices.index(head)

    def layers(self) -> Iterator[np.ndarray]:
        """Yield every layer's attention in order, one in memory at a time."""
        for layer in range(self.num_layers):
            yield self.attention(layer)

    def extra_array(self, section: str, key: str) -> np.ndarray | None:
        """Open an optional array (neurons, saliency) memory-mapped, or None when the capture has none."""
        entry = (self.manifest.get(section) or {}).get(key)
        if entry is None:
            return None
        return np.load(self.path / entry["path"], mmap_mode="r", allow_pickle=False)

    def saliency(self, kind: str = "grad_norm") -> np.ndarray | None:
        """Return the (T, T) saliency matrix `grad_norm` or `grad_x_input` (see att_report.saliency), if captured."""
        array = self.extra_array("saliency", kind)
        return None if array is None else np.asarray(array, dtype=np.float32)

    def neurons(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (units (layers, K), values (layers, T, K)) of the most varying hidden units, if captured."""
        units, values = self.extra_array("neurons", "units"), self.extra_array("neurons", "values")
        return None if units is None or values is None else (np.asarray(units), np.asarray(values, dtype=np.float32))

    def _check_layer_index(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise StoreError(f"layer {layer} is out of range; {self.path} has layers 0 to {self.num_layers - 1}.")


def load(path: str | Path, verify: bool = True) -> CaptureStore:
    """Open a store, checking its manifest, every layer file's shape and, with `verify`, every checksum."""
    path = Path(path)
    manifest = _read_manifest(path)
    store = CaptureStore(path=path, manifest=manifest)
    _check_tokens(store)
    _check_layer_files(store, verify)
    _check_extra_files(store, verify)
    return store


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory; give the directory that `att-report capture -o` wrote.")
    if not manifest_path.is_file():
        raise StoreError(f"{path} has no {MANIFEST_NAME}, so it is not a complete capture; capture it again.")
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise StoreError(f"{manifest_path} is not valid JSON ({error}); the capture is damaged, capture it again.")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{manifest_path} is not an att-report capture (its 'format' is not {FORMAT_NAME!r}).")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise StoreError(f"{manifest_path} lacks a valid {key!r}; the capture is damaged, capture it again.")
    for (section, key), kind in REQUIRED_FIELDS.items():
        if not _is_valid_field(manifest[section].get(key), kind):
            raise StoreError(
                f"{manifest_path} lacks a valid '{section}.{key}'; the capture is damaged, capture it again."
            )
    version = manifest["version"]
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path} uses store format version {version}, newer than the {FORMAT_VERSION} this att-report reads; "
            "upgrade att-report (pip install -U att-report)."
        )
    if version < 1:
        raise StoreError(f"{manifest_path} has an invalid 'version' {version}; the capture is damaged.")
    return manifest


def _is_valid_field(value: Any, kind: type) -> bool:
    """A value of exactly that kind (a bool is no integer here), and an integer at least 1."""
    if type(value) is not kind:
        return False
    return kind is not int or value >= 1


def _check_tokens(store: CaptureStore) -> None:
    tokens = store.manifest["tokens"]
    lengths = {key: len(tokens.get(key) or []) for key in ("ids", "text", "special")}
    if len(set(lengths.values())) != 1 or lengths["ids"] == 0:
        raise StoreError(f"{store.path / MANIFEST_NAME} has inconsistent 'tokens' lists {lengths}; capture it again.")
    if not 0 < store.prompt_length <= store.num_tokens:
        raise StoreError(f"{store.path / MANIFEST_NAME} has an invalid 'tokens.prompt_length'; capture it again.")


def _check_layer_files(store: CaptureStore, verify: bool) -> None:
    section = store.manifest["attention"]
    files = section.get("files") or []
    if len(files) != store.num_layers:
        raise StoreError(
            f"{store.path / MANIFEST_NAME} lists {len(files)} layer files for {store.num_layers} layers; capture it again."
        )
    if section.get("dtype") not in ATTENTION_DTYPES:
        raise StoreError(f"{store.path / MANIFEST_NAME} has an unknown 'attention.dtype' {section.get('dtype')!r}.")
    expected_layout = LAYOUT_LOWER_TRIANGLE if store.causal else LAYOUT_SQUARE
    if section.get("layout") != expected_layout:
        raise StoreError(f"{store.path / MANIFEST_NAME} has 'attention.layout' {section.get('layout')!r}, expected {expected_layout!r}.")
    shape = stored_shape(store.num_heads, store.num_tokens, store.causal)
    for entry in files:
        _check_layer_file(store, entry, shape, verify)


def _check_extra_files(store: CaptureStore, verify: bool) -> None:
    for section, key in EXTRA_ARRAYS:
        entry = (store.manifest.get(section) or {}).get(key)
        if entry is not None:
            _open_checked(store, entry, verify, f"{section} file")


def _open_checked(store: CaptureStore, entry: dict[str, Any], verify: bool, what: str) -> np.ndarray:
    """Open one listed array file after checking it exists, has its recorded size and (with verify) checksum."""
    file_path = store.path / str(entry.get("path", ""))
    if not file_path.is_file():
        raise StoreError(f"{what} {file_path} is missing; the capture is incomplete, capture it again.")
    if file_path.stat().st_size != entry.get("bytes"):
        raise StoreError(
            f"{what} {file_path} has {file_path.stat().st_size} bytes, the manifest says {entry.get('bytes')}; "
            "it is truncated or altered, capture it again."
        )
    if verify and sha256_of(file_path) != entry.get("sha256"):
        raise StoreError(f"{what} {file_path} does not match its sha256 checksum; it is damaged, capture it again.")
    try:
        return np.load(file_path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise StoreError(f"{what} {file_path} is not a readable .npy array ({error}); capture it again.")


def _check_layer_file(store: CaptureStore, entry: dict[str, Any], shape: tuple[int, ...], verify: bool) -> None:
    file_path = store.path / str(entry.get("path", ""))
    array = _open_checked(store, entry, verify, "layer file")
    if array.shape != shape or array.dtype != np.dtype(store.attention_dtype):
        raise StoreError(
            f"layer file {file_path} holds {array.dtype} {array.shape}, expected {store.attention_dtype} {shape}."
        )
