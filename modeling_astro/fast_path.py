"""The predictor's fastest dtype on this machine: measured once per machine, model shape and torch, then cached.

`AstroPredictor(..., dtype="auto")` asks [`choose_dtype`]. On a CPU the answer is measured, never assumed: bf16
matmuls are 2x faster than fp32 on some CPUs (AVX512-BF16 or AMX, well used by oneDNN) and 8x slower on others
(AVX2 only: ATen's generic fallback), so the same default cannot be right everywhere. The probe times the
predictor's own forward pass (XP -> labels on a few hundred synthetic stars) in float32 and in bfloat16 and keeps
bfloat16 only when it is at least `BF16_MIN_SPEEDUP` times faster (bf16 predictions differ from fp32 by ~1e-3 of
a sigma, so a marginal gain is not worth it). The result is cached in `$XDG_CACHE_HOME/astro_kernels/fast_path.json`
(default `~/.cache/astro_kernels`) under a key of the CPU model, its instruction-set flags, the torch version, the
thread count and the model's shape, so a new machine, a new torch or another model measures again; predictors
that start together on one machine (Ray actors, `accelerate launch` processes) measure once, the others wait.
On CUDA the rule is bf16 where the GPU supports it (`torch.cuda.is_bf16_supported()`), else fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .io_utils import atomic_write_text

#: bfloat16 is chosen on a CPU only when its measured forward pass is at least this many times faster than fp32.
BF16_MIN_SPEEDUP = 1.15
#: Instruction-set flags that decide which matmul paths oneDNN and ATen can take (part of the cache key).
PATH_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_description() -> dict[str, Any]:
    """This machine's CPU: `lscpu`'s model name, the `PATH_FLAGS` it has, and the torch version."""
    model, flags = "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return {"model_name": model, "flags": [flag for flag in PATH_FLAGS if flag in flags], "torch": torch.__version__}


def cache_file() -> Path:
    """The cache of measured choices: `$XDG_CACHE_HOME/astro_kernels/fast_path.json`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "astro_kernels" / "fast_path.json"


def cache_key(model_shape: dict[str, Any]) -> str:
    """Key of a choice: the CPU (model name, flags), torch, the thread count and the model's shape."""
    identity = {**cpu_description(), "threads": torch.get_num_threads(), "model": model_shape}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
        return entries
    except (OSError, ValueError) as error:
        warnings.warn(f"Ignoring the unreadable fast-path cache {path} ({error}); measuring again.", stacklevel=3)
        return {}


def _wait_for_other_measurements(path: Path) -> Any:
    """
    Block until no other process of this machine measures (`fcntl.flock` on `fast_path.json.lock`) and return the
    open lock file (closing it releases the lock), or None where the cache folder cannot be written or there is no
    flock. Predictors that start together (Ray actors, `accelerate launch` processes) then wait for the first
    one's result instead of timing each other's load and choosing apart.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): measurements may overlap
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")
    except OSError as error:  # a read-only home: measure anyway, the choice holds for this process
        warnings.warn(f"Could not lock the fast-path cache {path} ({error}).", stacklevel=3)
        return None
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


def choose_dtype(
    device: torch.device, model_shape: dict[str, Any], seconds_per_forward: Callable[[torch.dtype], float]
) -> tuple[torch.dtype, dict[str, Any]]:
    """
    The fastest dtype for the predictor on `device`, and a record of why.

    Args:
        device: where the predictor runs.
        model_shape: what identifies the network's cost (hidden size, blocks, heads), part of the cache key.
        seconds_per_forward: measures the predictor's forward pass in a dtype (median seconds); called on a CPU
            only when the cache has no entry for this machine, torch, thread count and model shape.

    Returns:
        `(dtype, record)`; `record` holds `dtype`, `reason`, the measured `seconds` per dtype, `cpu` and `cached`.
    """
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return dtype, {"dtype": str(dtype).removeprefix("torch."), "reason": "CUDA: bf16 where the GPU supports it"}
    if device.type != "cpu":
        return torch.float32, {"dtype": "float32", "reason": f"no measured path for {device.type}: float32"}
    path, key = cache_file(), cache_key(model_shape)
    lock = _wait_for_other_measurements(path)
    try:
        entry = _read_cache(path).get(key)  # read under the lock: maybe measured while this process waited
        if isinstance(entry, dict) and entry.get("dtype") in DTYPE_NAMES:
            return DTYPE_NAMES[entry["dtype"]], {**entry, "cached": True}
        return _measure_and_cache(path, key, seconds_per_forward)
    finally:
        if lock is not None:
            lock.close()


def _measure_and_cache(
    path: Path, key: str, seconds_per_forward: Callable[[torch.dtype], float]
) -> tuple[torch.dtype, dict[str, Any]]:
    """Measure the forward pass in both dtypes, choose, and add the choice to the cache under `key`."""
    seconds = {name: seconds_per_forward(dtype) for name, dtype in DTYPE_NAMES.items()}
    speedup = seconds["float32"] / seconds["bfloat16"]
    name = "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"
    record = {
        "dtype": name,
        "reason": f"measured: bf16 forward {speedup:.2f}x fp32 (bf16 needs >= {BF16_MIN_SPEEDUP}x)",
        "seconds": {dtype: round(value, 6) for dtype, value in seconds.items()},
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**_read_cache(path), key: record}, indent=1, sort_keys=True))
    except OSError as error:  # a read-only home: the choice still holds for this process
        warnings.warn(f"Could not cache the fast-path choice in {path} ({error}).", stacklevel=3)
    return DTYPE_NAMES[name], {**record, "cached": False}
