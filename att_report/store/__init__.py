"""The capture store: the one boundary between capture and render, a versioned directory format.

A store is a directory holding `manifest.json` and per-layer attention files, written under a temporary name and
renamed when complete (see `atomic.staged_directory`), and read here without torch. The format is specified in the
README section "The capture store"; `format` keeps its version history.
"""

from __future__ import annotations

from att_report.store.checks import EXTRA_ARRAYS, check_is_capture, inside_store, load
from att_report.store.format import (
    ATTENTION_DTYPE_CHOICES,
    COMPACT_FROM_TOKENS,
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Encoding,
    index_spans,
    lower_triangle_mask,
    pack_layer,
    resolve_encoding,
    stored_shape,
    unpack_layer,
)
from att_report.store.reader import CaptureStore, is_store
from att_report.store.space import check_disk_space, human_bytes, projected_store_bytes
from att_report.store.writer import LayerWriter, write_array, write_manifest

__all__ = [
    "ATTENTION_DTYPE_CHOICES", "COMPACT_FROM_TOKENS", "CaptureStore", "ENCODINGS", "EXTRA_ARRAYS", "Encoding",
    "FORMAT_NAME", "FORMAT_VERSION", "LayerWriter", "MANIFEST_NAME", "check_disk_space", "check_is_capture",
    "human_bytes", "index_spans", "inside_store", "is_store", "load", "lower_triangle_mask", "pack_layer",
    "projected_store_bytes", "resolve_encoding", "stored_shape", "unpack_layer", "write_array", "write_manifest",
]
