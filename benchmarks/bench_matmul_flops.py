"""Dense matmul FLOP/s of this machine at 2 threads, fp32 and bf16: the ceiling the inference figures are
compared with (achieved FLOP/s of the model as a fraction of this rate, in the same dtype).

Run: ``python benchmarks/bench_matmul_flops.py``; the last line printed is one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import THREADS, machine_load, setup_torch  # noqa: E402

#: (rows, inner, columns) shaped like the model's largest layers: a batch of request tokens through the MLP.
SHAPE = (4096, 1024, 1536)


def dense_matmul_gflops(dtype: torch.dtype, repeats: int = 15) -> float:
    """Median GFLOP/s of a `SHAPE` matmul in `dtype` on the CPU with the benchmark thread count."""
    setup_torch()
    rows, inner, columns = SHAPE
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, columns, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return round(2 * rows * inner * columns / float(np.median(seconds)) / 1e9, 1)


def main() -> None:
    fp32, bf16 = dense_matmul_gflops(torch.float32), dense_matmul_gflops(torch.bfloat16)
    result = {
        "benchmark": "matmul_flops",
        "stars_per_s": None,
        "naive_stars_per_s": None,
        "speedup": None,
        "peak_rss_mb": None,
        "matmul_gflops_fp32": fp32,
        "matmul_gflops_bf16": bf16,
        "bf16_over_fp32": round(bf16 / fp32, 2),
        "shape": SHAPE,
        "threads": THREADS,
        "load_average_1min": machine_load(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
