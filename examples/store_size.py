"""Measure the store's bytes per stored weight and the writer's speed at length (not a test; prints figures).

Writes one causal head of heavy-tailed synthetic attention (tests/synthetic.py: a sink, a recent-token bump and a
tail of tiny weights shaped like SmolLM2's at length) through the real LayerWriter, a block of rows at a time, in
every encoding, and reports bytes per stored weight, the projection, and the writer's throughput (weights per
second of CPU time, the float32 metrics included: the machine may be shared), then what a SmolLM2 store (30 layers x 9 heads) would take.

    python examples/store_size.py [--lengths 1024 2048 4096 8192]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the synthetic rows of the tests
from synthetic import heavy_tailed_rows  # noqa: E402

from att_report.store import LayerWriter, human_bytes, projected_store_bytes  # noqa: E402

ROWS_PER_BLOCK = 256
SMOLLM2_HEADS = 30 * 9


def measure(size: int, dtype: str, scratch: Path) -> dict[str, float]:
    """Write one head of `size` tokens; give bytes per weight, projected bytes per weight, weights per second."""
    rng = np.random.default_rng(size)
    writer = LayerWriter(scratch / f"{dtype}-{size}", 1, size, True, dtype)
    seconds = 0.0
    for start in range(0, size, ROWS_PER_BLOCK):
        block = heavy_tailed_rows(rng, 1, size, start, min(size, start + ROWS_PER_BLOCK))
        began = time.process_time()
        writer.write_block(0, 0, start, block)
        seconds += time.process_time() - began
    began = time.process_time()
    writer.finish_layer(0)
    seconds += time.process_time() - began
    entry = writer.files[0]
    stored = entry["bytes"] + (entry.get("index") or {}).get("bytes", 0)
    weights = size * (size + 1) // 2
    return {"bytes_per_weight": stored / weights,
            "projected_per_weight": projected_store_bytes(1, 1, size, True, dtype) / weights,
            "weights_per_s": weights / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--dtypes", nargs="+", default=["uint8", "float16"])
    args = parser.parse_args()
    print("| tokens | encoding | bytes / weight | projected | SmolLM2 store | writer, weights/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.lengths:
            for dtype in args.dtypes:
                figures = measure(size, dtype, Path(scratch))
                total = figures["bytes_per_weight"] * SMOLLM2_HEADS * size * (size + 1) / 2
                print(f"| {size:,} | {dtype} | {figures['bytes_per_weight']:.4f} | "
                      f"{figures['projected_per_weight']:.4f} | {human_bytes(int(total))} | "
                      f"{figures['weights_per_s'] / 1e6:.0f} M |", flush=True)


if __name__ == "__main__":
    main()
