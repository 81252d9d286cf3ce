"""Dense matmul FLOP/s of this machine at 2 threads, fp32 and bf16: the ceiling the inference figures are
compared with (achieved FLOP/s of the model as a fraction of this rate, in the same dtype). The ceiling is the
faster of ATen's matmul and oneDNN's pre-packed linear (what frozen `torch.compile` graphs run).

Run: ``python benchmarks/bench_matmul_flops.py``; the last line printed is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHAPE, THREADS, cpu_description, machine_load, matmul_gflops_by_method  # noqa: E402


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
        "cpu": cpu_description(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
