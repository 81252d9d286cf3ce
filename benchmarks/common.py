"""Shared pieces of the speed benchmarks: the paper model, the naive reference path, FLOP counts, phase
processes.

Every measured path runs in its own process (`run_phase`) so that its peak RSS (`ru_maxrss`) is its own; the
parent compares the paths and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from configuration_astro import AstroConfig  # noqa: E402
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction  # noqa: E402
from modeling_astro.fast_path import cpu_description  # noqa: E402

THREADS = 2
FAST_PATHS = ("fast_fp32", "fast_bf16", "compiled_fp32", "compiled_bf16")  # AstroPredictor: eager / torch.compile
LABEL_NAMES = ["teff", "logg", "m_h", "logebv"]


def setup_torch(seed: int = 0) -> None:
    """2 threads (the issue's reference machine) and a fixed seed."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)


def paper_model() -> tuple[AstroForObservationPrediction, AstroFeatureExtractor]:
    """The paper's 8.8 M-parameter model with random weights, in eval mode, and an identity tokenizer."""
    setup_torch()
    model = AstroForObservationPrediction(AstroConfig()).eval()
    return model, AstroFeatureExtractor()


def stars(input_names: Sequence[str], n_stars: int, seed: int = 0) -> dict[str, np.ndarray]:
    """
    Benchmark inputs: the simulated survey's test rows (`dataset_builder.default_data`, when present), else
    random standardised values; every star has all of `input_names`.
    """
    try:
        from dataset_builder.default_data import default_dataset
    except ImportError:
        rng = np.random.default_rng(seed)
        return {name: rng.normal(size=n_stars).astype(np.float32) for name in input_names}
    import pyarrow.parquet as pq

    shards = sorted((default_dataset() / "data").glob("test-*.parquet"))
    table = pq.read_table(shards, columns=list(input_names))
    columns = {name: table[name].to_numpy().astype(np.float32) for name in input_names}
    complete = np.flatnonzero(np.all([np.isfinite(v) for v in columns.values()], axis=0))
    rows = np.resize(complete, n_stars)  # repeat rows if the split is smaller than n_stars
    return {name: values[rows] for name, values in columns.items()}


@torch.no_grad()
def naive_predict(
    model: AstroForObservationPrediction,
    tokenizer: AstroFeatureExtractor,
    data: dict[str, np.ndarray],
    request: Sequence[str],
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """
    The original code's inference path, as reference: every star padded to the full context, numpy -> torch ->
    numpy per batch, fp32, the encoder once and then one decoder pass per requested observation (the
    keys/values of the encoder states recomputed for every request).
    """
    num_stars = len(next(iter(data.values())))
    means, sigmas = [], []
    for start in range(0, num_stars, batch_size):
        batch = {name: values[start : start + batch_size] for name, values in data.items()}
        inputs = tokenizer(batch, padding="max_length", return_tensors="np")
        input_ids = torch.from_numpy(inputs["input_ids"])
        attention_mask = torch.from_numpy(inputs["attention_mask"])
        states, _ = model.encode(input_ids, torch.from_numpy(inputs["input_values"]), attention_mask)
        columns_mean, columns_sigma = [], []
        for name in request:
            request_ids = tokenizer.encode_requests([name], batch_size=len(input_ids))
            mean, logvar, _ = model.predict_from_encoding(request_ids, states, attention_mask)
            value, sigma = tokenizer.inverse_transform(mean.numpy(), logvar.numpy(), request_ids.numpy())
            columns_mean.append(value[:, 0])
            columns_sigma.append(sigma[:, 0])
        means.append(np.stack(columns_mean, axis=1))
        sigmas.append(np.stack(columns_sigma, axis=1))
    return np.concatenate(means), np.concatenate(sigmas)


def matmul_flops(config: AstroConfig, num_inputs: int, num_requests: int, shared_keys: bool = True) -> float:
    """
    Matmul FLOPs (2 per multiply-add) to predict `num_requests` observations of a star with `num_inputs`
    tokens: encoder projections, attention and feed-forward layers, decoder blocks and the output MLP. With
    `shared_keys=False` (the naive path) the decoder's key/value projections are paid once per request.
    """
    hidden, length, requests = config.hidden_size, num_inputs, num_requests
    keys = length + int(config.attention_bias_kv)
    macs = 0
    for ffn in config.encoder_ffn_dims:
        macs += 4 * length * hidden * hidden + 2 * length * keys * hidden + 2 * length * hidden * ffn
    kv_passes = 1 if shared_keys else requests
    for ffn in config.decoder_ffn_dims:
        macs += kv_passes * 2 * length * hidden * hidden
        macs += requests * (2 * hidden * hidden + 2 * keys * hidden + 2 * hidden * ffn)
    widths = [hidden, *config.decoder_mlp_dims]
    macs += requests * (sum(a * b for a, b in zip(widths[:-1], widths[1:])) + 2 * widths[-1])
    return 2.0 * macs


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux `ru_maxrss` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_phase(script: str, phase: str, *args: str) -> dict:
    """Run `python script --phase phase *args` in a fresh process and return the JSON of its last line."""
    result = subprocess.run(
        [sys.executable, script, "--phase", phase, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{Path(script).name} phase {phase!r} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        except RuntimeError:  # e.g. bf16 without avx512bw/vl/dq or avx_ne_convert: oneDNN has no packed path
            packed = None
        if packed is not None:
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



def machine_load() -> float:
    """1-minute load average: the runs share the machine; a load above 2 threads slows every figure."""
    return round(os.getloadavg()[0], 2)


def inference_benchmark(
    script: str, name: str, input_names: Sequence[str], request: Sequence[str], default_stars: int
) -> None:
    """
    Command line of an inference benchmark: with `--phase`, measure one path in this process (naive,
    fast_fp32, fast_bf16, compiled_fp32, compiled_bf16); without, run each phase in its own process and print the
    comparison as one JSON line. Each phase measures the dense-matmul rate of its dtype between its timed runs,
    so that its FLOP/s fraction compares two rates taken under the same load of the (shared) machine.
    """
    import argparse

    parser = argparse.ArgumentParser(
        description=f"Benchmark {name}: naive per-request path vs AstroPredictor."
    )
    parser.add_argument("--n-stars", type=int, default=default_stars)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (median reported)")
    parser.add_argument("--phase", choices=[*FAST_PATHS, "naive"])
    parser.add_argument("--out", help="phase output: .npz file of predictions")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(_measure_phase(args, input_names, request)))
        return

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        common = ["--n-stars", str(args.n_stars), "--repeats", str(args.repeats)]
        phases = {
            phase: run_phase(script, phase, *common, "--out", f"{folder}/{phase}.npz")
            for phase in ("naive", *FAST_PATHS)
        }
        predictions = {phase: np.load(f"{folder}/{phase}.npz") for phase in ("naive", *FAST_PATHS)}
    reference = predictions["fast_fp32"]
    config = AstroConfig()
    fast_flops = matmul_flops(config, len(input_names), len(request))
    naive_flops = matmul_flops(config, config.context_length, len(request), shared_keys=False)
    naive = phases["naive"]
    fastest = max(FAST_PATHS, key=lambda phase: phases[phase]["stars_per_s"])
    paths = {}
    for phase in FAST_PATHS:
        achieved = fast_flops * phases[phase]["stars_per_s"] / 1e9
        paths[phase] = {
            "stars_per_s": phases[phase]["stars_per_s"],
            "speedup": round(phases[phase]["stars_per_s"] / naive["stars_per_s"], 2),
            "peak_rss_mb": phases[phase]["peak_rss_mb"],
            "achieved_gflops": round(achieved, 1),
            "matmul_gflops": phases[phase]["matmul_gflops"],
            "matmul_fraction": round(achieved / phases[phase]["matmul_gflops"], 3),
            "max_mean_difference_vs_fp32_sigma": float(
                np.max(np.abs(predictions[phase]["mean"] - reference["mean"]) / reference["sigma"])
            ),
        }
    from modeling_astro.inference import AstroPredictor

    setup_torch()
    auto = AstroPredictor(*paper_model(), device="cpu", dtype="auto").fast_path  # what users get by default
    eager = max(("fast_fp32", "fast_bf16"), key=lambda phase: phases[phase]["stars_per_s"])
    auto["agrees_with_the_timed_runs"] = (eager == "fast_bf16") == (auto["dtype"] == "bfloat16")
    result = {
        "benchmark": name,
        "auto_dtype": {**auto, "fastest_eager_path": eager},
        "stars_per_s": phases[fastest]["stars_per_s"],
        "naive_stars_per_s": naive["stars_per_s"],
        "speedup": paths[fastest]["speedup"],
        "peak_rss_mb": phases[fastest]["peak_rss_mb"],
        "fastest_path": fastest,
        "matmul_fraction": paths[fastest]["matmul_fraction"],
        "naive_peak_rss_mb": naive["peak_rss_mb"],
        "n_stars": args.n_stars,
        "mflop_per_star": round(fast_flops / 1e6, 1),
        "naive_mflop_per_star": round(naive_flops / 1e6, 1),
        "matmul_gflops_fp32": _median_matmul_gflops(phases, "fp32"),
        "matmul_gflops_bf16": _median_matmul_gflops(phases, "bf16"),
        "naive_matmul_fraction_fp32": round(naive_flops * naive["stars_per_s"] / 1e9 / naive["matmul_gflops"], 3),
        "naive_vs_fast_fp32_max_difference_sigma": float(
            np.max(np.abs(predictions["naive"]["mean"] - reference["mean"]) / reference["sigma"])
        ),
        "paths": paths,
        "inputs": "simulated survey" if _has_default_data() else "random standardised values",
        "threads": THREADS,
        "load_average_1min": machine_load(),
        "cpu": cpu_description(),
    }
    print(json.dumps(result))


def _median_matmul_gflops(phases: dict[str, dict], dtype: str) -> float:
    """Median dense-matmul GFLOP/s over the phases that ran in `dtype` ("fp32": the naive path too)."""
    rates = [result["matmul_gflops"] for phase, result in phases.items() if phase.endswith(dtype) or phase == "naive"]
    return float(np.median(rates))


def _has_default_data() -> bool:
    try:
        import dataset_builder.default_data  # noqa: F401
    except ImportError:
        return False
    return True


def _measure_phase(args, input_names: Sequence[str], request: Sequence[str]) -> dict:
    """
    One path, timed in this process: median stars/s over the repeats, the median dense-matmul rate of its dtype
    measured after each timed run, peak RSS; predictions saved.
    """

    dtype = torch.bfloat16 if args.phase.endswith("bf16") else torch.float32
    model, tokenizer = paper_model()
    observed = stars([*input_names, *request], args.n_stars)
    tokenizer.fit(observed)  # realistic standardisation of inputs and requests
    data = {name: observed[name] for name in input_names}
    warmup = {key: values[:128] for key, values in data.items()}
    if args.phase == "naive":
        naive_predict(model, tokenizer, warmup, request)

        def predict() -> tuple[np.ndarray, np.ndarray]:
            return naive_predict(model, tokenizer, data, request)
    else:
        from modeling_astro.inference import AstroPredictor

        compiled = args.phase.startswith("compiled")
        predictor = AstroPredictor(model, tokenizer, device="cpu", dtype=dtype, compile=compiled)
        warm = 2 * predictor.batch_size + predictor.batch_size // 2
        for _ in range(2 if compiled else 1):  # compiling sees a full and a partial batch before the timing
            predictor.predict({key: values[:warm] for key, values in data.items()}, request, progress=False)

        def predict() -> tuple[np.ndarray, np.ndarray]:
            table = predictor.predict(data, request, progress=False)
            return table[list(request)].to_numpy(), table[[f"{name}_sigma" for name in request]].to_numpy()

    seconds, matmul_rates = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        mean, sigma = predict()
        seconds.append(time.perf_counter() - start)
        if repeat == 0:
            peak_rss = peak_rss_mb()  # of the inference, before the matmul measurement allocates its matrices
        matmul_rates.append(dense_matmul_gflops(dtype, repeats=5))
    np.savez(args.out, mean=mean, sigma=sigma)
    return {
        "stars_per_s": round(args.n_stars / float(np.median(seconds)), 1),
        "seconds": [round(s, 3) for s in seconds],
        "peak_rss_mb": round(peak_rss, 1),
        "matmul_gflops": float(np.median(matmul_rates)),
    }
