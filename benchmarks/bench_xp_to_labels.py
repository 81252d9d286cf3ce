"""Benchmark XP -> labels: 10,000 stars with 64 input tokens (bp0-31, rp0-31), request teff, logg and m_h.

Compares, each path in its own process: the naive reference (the original code: padded to the full context,
one decoder pass per requested label, fp32), `AstroPredictor` in fp32 and in bf16, eager and with
`torch.compile`; reports stars/s, peak RSS, achieved FLOP/s against the dense-matmul rate of the same dtype and
the largest difference to eager fp32 in units of the predicted sigma; the headline is the fastest path.
Paper configuration (8.8 M parameters), random weights, 2 threads.

Run: ``python benchmarks/bench_xp_to_labels.py [--n-stars 10000] [--repeats 5]``; the last line printed is one
JSON object.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import inference_benchmark  # noqa: E402

INPUTS = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]

if __name__ == "__main__":
    inference_benchmark(__file__, "xp_to_labels", INPUTS, ["teff", "logg", "m_h"], default_stars=10_000)
