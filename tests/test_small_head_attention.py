"""Tests of the CPU attention kernel for small heads (modeling_astro/small_head_attention.py)."""

import numpy as np
import pytest
import torch
from torch.profiler import profile
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction, inference, small_head_attention
from modeling_astro.inference import AstroPredictor
from modeling_astro.small_head_attention import (
    ATTENTION_IMPLEMENTATION,
    load_kernel,
    small_head_attention_forward,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(load_kernel() is None, reason="no C++ compiler with OpenMP to build the kernel"),
]
OP_NAME = "astro::small_head_attention"


class Attention(torch.nn.Module):
    is_causal = False


def attention_inputs(head_dim: int, num_queries: int, num_keys: int = 33, seed: int = 0, dtype=torch.float32):
    """Query (5, 4, Lq, D), key/value (5, 4, K, D) and a key mask with padded keys, star 0 with a single key."""
    generator = torch.Generator().manual_seed(seed)
    shape = (5, 4)
    query = torch.randn(*shape, num_queries, head_dim, generator=generator) * 2
    key = torch.randn(*shape, num_keys, head_dim, generator=generator) * 2
    value = torch.randn(*shape, num_keys, head_dim, generator=generator)
    mask = torch.rand(shape[0], 1, 1, num_keys, generator=generator) > 0.4
    mask[..., -1] = True
    mask[0] = False
    mask[0, ..., 5] = True
    return query.to(dtype), key.to(dtype), value.to(dtype), mask


def kernel_calls(function, *args, **kwargs) -> tuple[object, int]:
    """The result of `function(*args, **kwargs)` and how many times it ran the kernel op."""
    with profile() as trace:
        result = function(*args, **kwargs)
    return result, sum(event.name == OP_NAME for event in trace.events())


@pytest.mark.parametrize("head_dim", [8, 16, 32])
@pytest.mark.parametrize("num_queries", [3, 17, 64])
def test_kernel_matches_sdpa(head_dim, num_queries):
    query, key, value, mask = attention_inputs(head_dim, num_queries, seed=head_dim + num_queries)
    with torch.no_grad():
        (output, weights), calls = kernel_calls(
            small_head_attention_forward, Attention(), query, key, value, mask, scaling=0.3
        )
        expected, _ = sdpa_attention_forward(
            Attention(), query.double(), key.double(), value.double(), mask, scaling=0.3
        )
        bf16, _ = small_head_attention_forward(Attention(), *(t.bfloat16() for t in (query, key, value)), mask)
        bf16_sdpa, _ = sdpa_attention_forward(Attention(), *(t.bfloat16() for t in (query, key, value)), mask)
    assert calls == 1 and weights is None
    assert output.shape == (5, num_queries, 4, head_dim) and output.dtype == torch.float32
    torch.testing.assert_close(output.double(), expected, rtol=0, atol=1e-5)
    # bf16: inputs rounded to bf16 either way, accumulation in fp32 (the kernel) or bf16 (SDPA)
    assert bf16.dtype == torch.bfloat16
    kernel_error = (bf16.double() - expected).abs().max()
    assert kernel_error <= (bf16_sdpa.double() - expected).abs().max() + 1e-3


def test_kernel_uses_the_default_scale_and_broadcast_mask():
    query, key, value, mask = attention_inputs(16, 3)
    mask = mask[1:2]  # one mask row for every star
    with torch.no_grad():
        output, _ = small_head_attention_forward(Attention(), query, key, value, mask)
        expected, _ = sdpa_attention_forward(Attention(), query, key, value, mask.expand(5, -1, -1, -1))
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["head_dim_12", "gradients", "dropout", "float16", "additive_mask"])
def test_unsupported_calls_fall_back_to_sdpa(case):
    query, key, value, mask = attention_inputs(12 if case == "head_dim_12" else 8, 5)
    kwargs = {"dropout": 0.5} if case == "dropout" else {}
    if case == "gradients":
        query.requires_grad_(True)
    if case == "float16":
        query, key, value = query.half(), key.half(), value.half()
    if case == "additive_mask":
        mask = torch.zeros(mask.shape).masked_fill(~mask, -torch.inf)
    torch.manual_seed(1)
    (output, _), calls = kernel_calls(small_head_attention_forward, Attention(), query, key, value, mask, **kwargs)
    torch.manual_seed(1)
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, mask, **kwargs)
    assert calls == 0
    torch.testing.assert_close(output, expected)
    if case == "gradients":
        output.sum().backward()
        assert query.grad is not None


def test_predictor_runs_the_kernel_and_matches_sdpa():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=32, encoder_attention_heads=[4, 2], decoder_attention_heads=[4, 2, 1])
    model = AstroForObservationPrediction(config)
    tokenizer = AstroFeatureExtractor()
    rng = np.random.default_rng(0)
    data = {name: rng.normal(size=50) for name in ["bp0", "bp1", "rp0", "bprp", "jh", "jk", "g_fakemag"]}
    data["jh"][rng.random(50) < 0.5] = np.nan
    fast = AstroPredictor(model, tokenizer, device="cpu", batch_size=16)
    reference = AstroPredictor(model, tokenizer, device="cpu", batch_size=16, attn_implementation="sdpa")
    assert fast._network.config._attn_implementation == ATTENTION_IMPLEMENTATION
    assert model.config._attn_implementation != ATTENTION_IMPLEMENTATION  # the user's model is not changed
    table, calls = kernel_calls(fast.predict, data, ["teff", "logg", "m_h"])
    assert calls == 4 * 5  # 4 batches x (2 encoder + 3 decoder blocks)
    np.testing.assert_allclose(
        table.to_numpy(), reference.predict(data, ["teff", "logg", "m_h"]).to_numpy(), rtol=1e-5, atol=1e-6
    )
    with torch.no_grad():  # fp32 predictors share the model's weights: later changes are seen
        model.head.layers[-1].bias.add_(1.0)
    assert not np.allclose(fast.predict(data, ["teff"])["teff"], table["teff"])


def test_without_compiler_predictor_keeps_the_models_attention(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.warns(UserWarning, match=r"No C\+\+ compiler"):
        assert small_head_attention.load_kernel.__wrapped__() is None
    monkeypatch.setattr(inference, "load_kernel", lambda: None)
    model = AstroForObservationPrediction(tiny_config())
    predictor = AstroPredictor(model, AstroFeatureExtractor(), device="cpu")
    assert predictor._network.config._attn_implementation == model.config._attn_implementation
    assert predictor.batch_size == inference.DEFAULT_BATCH_SIZE["cpu"]


def test_build_writes_the_library_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel = small_head_attention.load_kernel.__wrapped__()
    libraries = list((tmp_path / "astro_kernels").iterdir())
    assert kernel is not None and len(libraries) == 1 and libraries[0].suffix == ".so"
    assert small_head_attention.load_kernel.__wrapped__()._name == kernel._name  # built once, then reused
