"""`load`: open a store only after checking all of it, and say precisely what is wrong with a damaged, crafted or
foreign one. Stores arrive as bug-ticket attachments, so no manifest entry may lead the reader outside the store."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import orjson

from att_report.errors import StoreError
from att_report.store.format import (
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LAYOUT_LOWER_TRIANGLE,
    LAYOUT_SQUARE,
    MANIFEST_NAME,
    ROW_BLOCK,
    row_blocks,
    sha256_of,
    stored_shape,
)
from att_report.store.reader import CaptureStore

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
V2_FIELDS: dict[tuple[str, str], type] = {
    ("attention", "encoding"): str,
    ("attention", "num_tokens"): int,
    ("attention", "layer_indices"): list,
    ("attention", "head_indices"): list,
}


def load(path: str | Path, verify: bool = True) -> CaptureStore:
    """Open a store, checking its manifest, every file's place, size and shape and, with `verify`, every checksum."""
    path = Path(path)
    store = CaptureStore(path=path, manifest=_read_manifest(path))
    _check_tokens(store)
    _check_attention_section(store)
    for entry in store.manifest["attention"]["files"]:
        _check_layer_file(store, entry, verify)
    _check_metrics(store)
    _check_extra_files(store, verify)
    return store


def _damaged(store_path: Path, problem: str) -> StoreError:
    return StoreError(f"{store_path / MANIFEST_NAME} {problem}; the capture is damaged, capture it again.")


def check_is_capture(path: Path) -> None:
    """Refuse, in one line with the fix, what people give instead of a capture directory: nothing, a file (the
    manifest itself, a report page), or the report `att-report render` wrote from a capture."""
    if (path / MANIFEST_NAME).is_file():
        return
    from att_report.report.render import is_report  # the report builds on the store: imported only to name one

    given = "give the capture directory, the one `att-report capture -o` wrote"
    if not path.exists():
        raise StoreError(f"{path} does not exist; {given}.")
    found = "an att-report report" if is_report(path) else "an HTML file" if path.suffix in (".html", ".htm") else None
    if found:
        raise StoreError(f"{path} is {found}, not a capture; load() and every command take the capture directory "
                         "the report was rendered from (the one `att-report capture -o` wrote).")
    if path.name == MANIFEST_NAME:
        raise StoreError(f"{path} is a capture's manifest; give the capture directory that holds it, {path.parent}.")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a capture directory; {given}.")


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_NAME
    check_is_capture(path)
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
            raise _damaged(path, f"lacks a valid {key!r}")
    version = manifest["version"]
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path} uses store format version {version}, newer than the {FORMAT_VERSION} this att-report reads; "
            "upgrade att-report (pip install -U att-report)."
        )
    if version < 1:
        raise _damaged(path, f"has an invalid 'version' {version}")
    for (section, key), kind in (REQUIRED_FIELDS | (V2_FIELDS if version >= 2 else {})).items():
        if not _is_valid_field(manifest[section].get(key), kind):
            raise _damaged(path, f"lacks a valid '{section}.{key}'")
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


def _check_attention_section(store: CaptureStore) -> None:
    """The encoding, layout, token count and scope, and one file entry per stored layer."""
    section = store.manifest["attention"]
    if store.version == 1:
        if section.get("dtype") not in ("float16", "float32"):
            raise _damaged(store.path, f"has an unknown 'attention.dtype' {section.get('dtype')!r}")
    elif section["encoding"] not in ENCODINGS:
        raise StoreError(f"{store.path / MANIFEST_NAME} uses attention encoding {section['encoding']!r}, which this "
                         f"att-report does not read ({', '.join(ENCODINGS)}); upgrade att-report.")
    expected_layout = LAYOUT_LOWER_TRIANGLE if store.causal else LAYOUT_SQUARE
    if section.get("layout") != expected_layout:
        raise _damaged(store.path, f"has 'attention.layout' {section.get('layout')!r}, expected {expected_layout!r}")
    if section.get("num_tokens", store.num_tokens) != store.num_tokens:
        raise _damaged(store.path, f"has 'attention.num_tokens' {section.get('num_tokens')!r} for "
                                   f"{store.num_tokens} tokens")
    if store.encoding.chunked and section.get("row_block") != ROW_BLOCK:
        raise StoreError(f"{store.path / MANIFEST_NAME} has 'attention.row_block' {section.get('row_block')!r}; "
                         f"this att-report reads blocks of {ROW_BLOCK} rows, so upgrade att-report.")
    _check_indices(store, "layer_indices", store.num_layers)
    _check_indices(store, "head_indices", store.num_heads)
    files = section["files"]
    if len(files) != len(store.layer_indices):
        raise StoreError(f"{store.path / MANIFEST_NAME} lists {len(files)} layer files for "
                         f"{len(store.layer_indices)} layers; capture it again.")
    if store.version >= 2 and [entry.get("layer") if isinstance(entry, dict) else None
                               for entry in files] != store.layer_indices:
        raise _damaged(store.path, "has 'attention.files' whose 'layer' values differ from 'attention.layer_indices'")


def _check_indices(store: CaptureStore, key: str, count: int) -> None:
    """Scope lists: ascending, distinct, non-empty integers below the model's count."""
    indices = store.layer_indices if key == "layer_indices" else store.head_indices
    valid = indices and all(type(i) is int for i in indices) and indices == sorted(set(indices))
    if not valid or indices[0] < 0 or indices[-1] >= count:
        raise _damaged(store.path, f"has 'attention.{key}' {indices!r}, not ascending indices below {count}")


def inside_store(store: CaptureStore, entry: Any, what: str) -> Path:
    """The path a file entry names, refused unless it is a plain relative path to a regular file (no symbolic
    link on the way) inside the store directory."""
    relative = entry.get("path") if isinstance(entry, dict) else None
    manifest = store.path / MANIFEST_NAME
    if not isinstance(relative, str) or not relative:
        raise StoreError(f"{manifest} has a {what} entry without a path; the capture is damaged, capture it again.")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or "\\" in relative or "\x00" in relative:
        raise StoreError(f"{manifest} names {what} {relative!r}, outside the store; a store only refers to files "
                         "inside itself, so do not open this one (capture it again).")
    path = current = store.path / pure
    while current != store.path:
        if current.is_symlink():
            raise StoreError(f"{what} {current} is a symbolic link; a store holds its own files, so do not open "
                             "this one (capture it again).")
        current = current.parent
    return path


def _open_checked(store: CaptureStore, entry: dict[str, Any], verify: bool, what: str) -> Path:
    """Check one listed file: inside the store, present, its recorded size and (with verify) checksum."""
    file_path = inside_store(store, entry, what)
    if not file_path.is_file():
        raise StoreError(f"{what} {file_path} is missing; the capture is incomplete, capture it again.")
    if file_path.stat().st_size != entry.get("bytes"):
        raise StoreError(
            f"{what} {file_path} has {file_path.stat().st_size} bytes, the manifest says {entry.get('bytes')}; "
            "it is truncated or altered, capture it again."
        )
    if verify and sha256_of(file_path) != entry.get("sha256"):
        raise StoreError(f"{what} {file_path} does not match its sha256 checksum; it is damaged, capture it again.")
    return file_path


def _open_array(store: CaptureStore, entry: dict[str, Any], verify: bool, what: str) -> np.ndarray:
    file_path = _open_checked(store, entry, verify, what)
    try:
        return np.load(file_path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise StoreError(f"{what} {file_path} is not a readable .npy array ({error}); capture it again.")


def _check_layer_file(store: CaptureStore, entry: dict[str, Any], verify: bool) -> None:
    heads = len(store.head_indices)
    if store.encoding.chunked:
        size = _open_checked(store, entry, verify, "layer file").stat().st_size
        index_entry = entry.get("index") if isinstance(entry.get("index"), dict) else {}
        index = _open_array(store, index_entry, verify, "layer index")
        shape = (heads, row_blocks(store.num_tokens), 2)
        if index.shape != shape or index.dtype != np.int64:
            raise StoreError(f"layer index {store.path / index_entry['path']} holds {index.dtype} {index.shape}, "
                             f"expected int64 {shape}; capture it again.")
        if (index < 0).any() or (index.sum(axis=2) > size).any():
            raise StoreError(f"layer index {store.path / index_entry['path']} points outside its layer file "
                             f"{entry['path']}; the capture is damaged, capture it again.")
        return
    array = _open_array(store, entry, verify, "layer file")
    shape = stored_shape(heads, store.num_tokens, store.causal)
    if array.shape != shape or array.dtype != np.dtype(store.attention_dtype):
        raise StoreError(f"layer file {store.path / entry['path']} holds {array.dtype} {array.shape}, expected "
                         f"{store.attention_dtype} {shape}.")


def _check_metrics(store: CaptureStore) -> None:
    """Stored head metrics, when present: one value per stored layer, stored head and named metric."""
    stored = store.manifest["attention"].get("metrics")
    if stored is None:
        return
    names = stored.get("names") if isinstance(stored, dict) else None
    try:
        values = np.array(stored.get("values"), dtype=np.float64) if names else None
    except (TypeError, ValueError):
        values = None
    expected = (len(store.layer_indices), len(store.head_indices), len(names or []))
    if values is None or values.shape != expected or not isinstance(stored.get("source"), str):
        raise _damaged(store.path, f"has 'attention.metrics' that are not {expected[0]} layers x {expected[1]} heads "
                                   f"x {expected[2]} metrics with a source")


def _check_extra_files(store: CaptureStore, verify: bool) -> None:
    arrays = {}
    for section, key in EXTRA_ARRAYS:
        entry = (store.manifest.get(section) or {}).get(key)
        if entry is not None:
            arrays[(section, key)] = _open_array(store, entry, verify, f"{section} file")
    size = store.num_tokens
    for key in ("grad_norm", "grad_x_input"):
        if ("saliency", key) in arrays and arrays[("saliency", key)].shape != (size, size):
            raise _damaged(store.path, f"lists a saliency {key} of shape {arrays[('saliency', key)].shape}, "
                                       f"expected ({size}, {size})")
    units, values = arrays.get(("neurons", "units")), arrays.get(("neurons", "values"))
    if (units is None) != (values is None):
        raise _damaged(store.path, "lists only one of 'neurons.units' and 'neurons.values'")
    if units is not None and values is not None and (
            units.ndim != 2 or values.shape != (units.shape[0], size, units.shape[1])
            or units.shape[0] not in (store.num_layers, len(store.layer_indices))):
        raise _damaged(store.path, f"lists neurons of shapes {units.shape} and {values.shape}, expected (layers, K) "
                                   f"and (layers, {size}, K)")
