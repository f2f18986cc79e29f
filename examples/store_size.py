"""Measure the store's bytes per stored weight and the writer's speed at length (not a test; prints figures).

Writes causal heads of heavy-tailed synthetic attention (tests/synthetic.py: a sink, a recent-token bump and a
tail of tiny weights shaped like SmolLM2's at length) through the real LayerWriter, 64 rows at a time as the capture
hands them over, in every encoding, and reports bytes per stored weight, the projection, what a SmolLM2 store
(30 layers x 9 heads) would take, and the writer's throughput, the float32 metrics included, as the median of
--runs: weights per second of wall time and of CPU time (all threads; the machine may be shared).

    python examples/store_size.py [--lengths 1024 2048 4096 8192] [--heads 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the synthetic rows of the tests
from synthetic import heavy_tailed_rows  # noqa: E402

from att_report.store import LayerWriter, human_bytes, projected_store_bytes  # noqa: E402

ROWS_PER_BLOCK = 64
SMOLLM2_HEADS = 30 * 9


def measure(size: int, dtype: str, heads: int, scratch: Path) -> dict[str, float]:
    """Write `heads` heads of `size` tokens; give bytes per weight, projected bytes per weight, and weights per
    second of wall and of CPU time."""
    rng = np.random.default_rng(size)
    writer = LayerWriter(scratch / f"{dtype}-{size}", heads, size, True, dtype)
    wall = cpu = 0.0
    for start in range(0, size, ROWS_PER_BLOCK):
        block = heavy_tailed_rows(rng, heads, size, start, min(size, start + ROWS_PER_BLOCK))
        wall, cpu = wall - time.perf_counter(), cpu - time.process_time()
        writer.write_block(0, 0, start, block)
        wall, cpu = wall + time.perf_counter(), cpu + time.process_time()
    wall, cpu = wall - time.perf_counter(), cpu - time.process_time()
    writer.finish_layer(0)
    wall, cpu = wall + time.perf_counter(), cpu + time.process_time()
    entry = writer.files[0]
    stored = entry["bytes"] + (entry.get("index") or {}).get("bytes", 0)
    weights = heads * size * (size + 1) // 2
    return {"bytes_per_weight": stored / weights,
            "projected_per_weight": projected_store_bytes(1, heads, size, True, dtype) / weights,
            "weights_per_s": weights / wall, "weights_per_cpu_s": weights / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--dtypes", nargs="+", default=["uint8", "float16"])
    parser.add_argument("--heads", type=int, default=3, help="heads per block, as a head-chunked capture writes them")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; medians are reported")
    args = parser.parse_args()
    print("| tokens | encoding | bytes / weight | projected | SmolLM2 store | writer, weights/s | per CPU s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.lengths:
            for dtype in args.dtypes:
                runs = [measure(size, dtype, args.heads, Path(scratch) / str(run)) for run in range(args.runs)]
                figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                total = figures["bytes_per_weight"] * SMOLLM2_HEADS * size * (size + 1) / 2
                print(f"| {size:,} | {dtype} | {figures['bytes_per_weight']:.4f} | "
                      f"{figures['projected_per_weight']:.4f} | {human_bytes(int(total))} | "
                      f"{figures['weights_per_s'] / 1e6:.0f} M | {figures['weights_per_cpu_s'] / 1e6:.0f} M |",
                      flush=True)


if __name__ == "__main__":
    main()
