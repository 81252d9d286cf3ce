"""Attention for the small heads of the Astro model on CPUs: a C++ kernel, built on first use, as an attention backend.

The paper model's heads are 8-32 wide, where ATen's CPU scaled-dot-product attention spends most of its time on
per-tile overhead (about 40% of an XP -> labels forward pass in bf16 at 2 threads). `small_head_attention.cpp`
puts the queries (or, for a few queries, the keys) of a (star, head) in the lanes of a 16-float vector instead.

The kernel is compiled with the system C++ compiler (`$CXX`, default `g++`) for this CPU (`-march=native`) into
`$XDG_CACHE_HOME/astro_kernels` (default `~/.cache/astro_kernels`), once per source, compiler and CPU. It is
registered with transformers' `AttentionInterface` as `"astro_cpu_small_heads"`, which [`AstroPredictor`] uses on
the CPU; calls it cannot serve (training, gradients, dropout, other devices or dtypes, head sizes other than
8/16/32) go to transformers' SDPA attention.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_IMPLEMENTATION = "astro_cpu_small_heads"
SUPPORTED_HEAD_DIMS = (8, 16, 32)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
KERNEL_SOURCE = Path(__file__).with_name("small_head_attention.cpp")
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")


def kernel_cache_dir() -> Path:
    """Folder of the compiled kernels: `$XDG_CACHE_HOME/astro_kernels`, default `~/.cache/astro_kernels`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "astro_kernels"


def _cpu_flags() -> bytes:
    """The CPU's feature flags: a kernel built with `-march=native` only runs on a CPU that has them."""
    try:
        with open("/proc/cpuinfo", "rb") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith((b"flags", b"Features"))), b"")
    except OSError:
        return b""


def _build(compiler: str, library: Path) -> None:
    """Compile the kernel into `library` (a temporary file renamed into place: no half-written library)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_name(f".{library.name}.{os.getpid()}.partial")
    try:
        subprocess.run(
            [compiler, *COMPILE_FLAGS, str(KERNEL_SOURCE), "-o", str(partial)],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)


@functools.cache
def load_kernel() -> ctypes.CDLL | None:
    """
    The compiled kernel library, built on the first call; `None` (with a warning saying why) where it cannot be
    built or loaded, e.g. without a C++ compiler with OpenMP.
    """
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        warnings.warn(
            f"No C++ compiler ({os.environ.get('CXX', 'g++')!r}, set $CXX) to build the small-head attention "
            "kernel: attention falls back to SDPA (slower on CPUs). Install g++ to get the fast path.",
            stacklevel=2,
        )
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, check=True).stdout
        key = hashlib.sha256(
            b"\0".join([KERNEL_SOURCE.read_bytes(), " ".join(COMPILE_FLAGS).encode(), version, _cpu_flags()])
        ).hexdigest()[:16]
        library = kernel_cache_dir() / f"small_head_attention-{key}.so"
        if not library.exists():
            _build(compiler, library)
        kernel = ctypes.CDLL(str(library))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        warnings.warn(
            f"Could not build or load the small-head attention kernel with {compiler}: {detail}. Attention falls "
            "back to SDPA (slower on CPUs).",
            stacklevel=2,
        )
        return None
    for function in (kernel.attention_f32, kernel.attention_bf16):
        function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_float]
        function.restype = ctypes.c_int
    return kernel


def _kernel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """
    Attention output `(batch, num_queries, num_heads, head_dim)` of query `(batch, num_queries, num_heads,
    head_dim)` over key/value `(batch, num_keys, num_heads, head_dim)`; `keep` `(batch, num_keys)` uint8 marks
    the keys each star may attend (at least one per star).
    """
    kernel = load_kernel()
    if kernel is None:
        raise RuntimeError(
            f"The {ATTENTION_IMPLEMENTATION!r} attention needs its C++ kernel, which could not be built (see the "
            "warning above); use attn_implementation='sdpa'."
        )
    batch, num_queries, num_heads, head_dim = query.shape
    query, key, value, keep = query.contiguous(), key.contiguous(), value.contiguous(), keep.contiguous()
    out = torch.empty_like(query)
    function = kernel.attention_bf16 if query.dtype == torch.bfloat16 else kernel.attention_f32
    status = function(
        *(tensor.data_ptr() for tensor in (query, key, value, keep, out)),
        batch,
        num_heads,
        head_dim,
        num_queries,
        key.shape[1],
        scale,
    )
    if status != 0:
        raise ValueError(f"The small-head attention kernel supports head_dim {SUPPORTED_HEAD_DIMS}, got {head_dim}.")
    return out


# A custom op, so that torch.compile keeps the kernel call as one opaque node of its graph. Registered once per
# process even if this file is imported under two module names (e.g. as remote code).
if not hasattr(torch.ops.astro, "small_head_attention"):
    torch.library.custom_op("astro::small_head_attention", mutates_args=())(_kernel_attention).register_fake(
        lambda query, key, value, keep, scale: torch.empty_like(query)
    )


def small_head_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    Attention-interface function: query `(batch, heads, num_queries, head_dim)`, key/value `(batch, heads,
    num_keys, head_dim)`, boolean `attention_mask` `(batch, 1, 1, num_keys)` -> output `(batch, num_queries,
    heads, head_dim)`, `None`. Inference on CPU in float32/bfloat16 with heads of 8, 16 or 32 runs the kernel;
    anything else runs transformers' SDPA attention.
    """
    batch, _, _, head_dim = query.shape
    usable = (
        query.device.type == "cpu"
        and query.dtype in SUPPORTED_DTYPES
        and head_dim in SUPPORTED_HEAD_DIMS
        and dropout == 0.0
        and not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))
        and attention_mask is not None
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == attention_mask.shape[2] == 1
    )
    if not usable:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    keep = attention_mask.reshape(attention_mask.shape[0], -1).expand(batch, -1).to(torch.uint8)
    output = torch.ops.astro.small_head_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        keep,
        head_dim**-0.5 if scaling is None else scaling,
    )
    return output, None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, small_head_attention_forward)

__all__ = ["ATTENTION_IMPLEMENTATION", "load_kernel", "small_head_attention_forward"]
