"""Dense matmul FLOP/s of this machine at 2 threads, fp32 and bf16: the ceiling the inference figures are
compared with (achieved FLOP/s of the model as a fraction of this rate, in the same dtype). The ceiling is the
faster of ATen's matmul and oneDNN's pre-packed linear (what frozen `torch.compile` graphs run).

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
    """
    GFLOP/s of a `SHAPE` matmul in `dtype` on the CPU with the benchmark thread count: the faster (median of
    `repeats` each) of ATen's matmul and oneDNN's linear with a pre-packed weight, which is what the frozen
    `torch.compile` graphs run. The two can differ 2x: on AMD CPUs MKL's fp32 GEMM behind ATen takes a slow path.
    """
    return max(matmul_gflops_by_method(dtype, repeats).values())


def matmul_gflops_by_method(dtype: torch.dtype, repeats: int = 15) -> dict[str, float]:
    """Median GFLOP/s of a `SHAPE` matmul through ATen (`a @ b`) and, where available, oneDNN's packed linear."""
    setup_torch()
    rows, inner, columns = SHAPE
    a, weight = torch.randn(rows, inner, dtype=dtype), torch.randn(columns, inner, dtype=dtype)
    methods = {"aten": lambda: a @ weight.T}
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        methods["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    rates = {}
    with torch.inference_mode():
        for name, matmul in methods.items():
            for _ in range(3):
                matmul()
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                matmul()
                seconds.append(time.perf_counter() - start)
            rates[name] = round(2 * rows * inner * columns / float(np.median(seconds)) / 1e9, 1)
    return rates


def main() -> None:
    fp32, bf16 = matmul_gflops_by_method(torch.float32), matmul_gflops_by_method(torch.bfloat16)
    fp32_best, bf16_best = max(fp32.values()), max(bf16.values())
    result = {
        "benchmark": "matmul_flops",
        "stars_per_s": None,
        "naive_stars_per_s": None,
        "speedup": None,
        "peak_rss_mb": None,
        "matmul_gflops_fp32": fp32_best,
        "matmul_gflops_bf16": bf16_best,
        "bf16_over_fp32": round(bf16_best / fp32_best, 2),
        "by_method_fp32": fp32,
        "by_method_bf16": bf16,
        "shape": SHAPE,
        "threads": THREADS,
        "load_average_1min": machine_load(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
