"""Benchmark labels -> XP: 2,000 stars with 4 input tokens (teff, logg, m_h, logebv), request the 110 XP
coefficients bp0-54 and rp0-54.

Compares, each path in its own process: the naive reference (the original code: 4 tokens padded to the full
context of 64, one decoder pass per requested coefficient, fp32), `AstroPredictor` in fp32 and in bf16, eager
and with `torch.compile`; reports stars/s, peak RSS, achieved FLOP/s against the dense-matmul rate of the same
dtype and the largest difference to eager fp32 in units of the predicted sigma; the headline is the fastest path.
Paper configuration (8.8 M parameters), random weights, 2 threads.

Run: ``python benchmarks/bench_labels_to_xp.py [--n-stars 2000] [--repeats 5]``; the last line printed is one
JSON object.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LABEL_NAMES, XP_NAMES, inference_benchmark  # noqa: E402

if __name__ == "__main__":
    inference_benchmark(__file__, "labels_to_xp", LABEL_NAMES, XP_NAMES, default_stars=2_000)
