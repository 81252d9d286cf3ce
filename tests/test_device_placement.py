"""Every tensor of a training, validation or inference step goes to the model's device.

A CI machine has no GPU, so the model is put on PyTorch's `meta` device: a tensor left on the CPU then reaches a
module beside meta parameters, which the hooks below report by name. A step that places everything correctly runs on
meta tensors until its first read of a number (`.item()` / `float()` / a copy to numpy), which cannot happen on meta:
that is where these tests expect it to stop.
"""

import numpy as np
import pytest
import torch

import train
from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.data_collator_astro import AstroDataCollator
from modeling_astro.inference import AstroPredictor

#: What PyTorch raises when a number is read from a meta tensor: the step got that far with every tensor placed.
READ_FROM_META = r"cannot be called on meta tensors|Cannot copy out of meta tensor"


def stars(num_stars: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of every vocabulary name, with errors."""
    rng = np.random.default_rng(seed)
    data = {}
    for name in AstroFeatureExtractor().observation_names:
        data[name] = rng.normal(3.0, 2.0, num_stars)
        data[f"{name}_err"] = rng.uniform(0.01, 0.2, num_stars)
    return data


def assert_inputs_on_parameter_device(model: torch.nn.Module) -> list[str]:
    """Hooks on every module with parameters that fail when an input tensor is elsewhere; returns the checked names."""
    checked: list[str] = []

    def check(module_name: str):
        def hook(module, args, kwargs):
            device = next(module.parameters()).device
            tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
            wrong = [str(t.device) for t in tensors if t.device != device and t.dim() > 0]
            assert not wrong, f"{module_name or 'the model'} got tensors on {wrong}, its parameters are on {device}"
            checked.append(module_name)

        return hook

    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or name == "":
            module.register_forward_pre_hook(check(name), with_kwargs=True)
    return checked


@pytest.fixture
def meta_model() -> AstroForObservationPrediction:
    with torch.device("meta"):
        return AstroForObservationPrediction(tiny_config(context_length=16))


def test_hooks_catch_a_tensor_left_on_the_cpu(meta_model):
    """The check itself can fail: a CPU batch given to a meta model is reported, naming the module."""
    checked = assert_inputs_on_parameter_device(meta_model)
    tokenizer = AstroFeatureExtractor(context_length=16).fit(stars(200, seed=1))
    batch = AstroDataCollator(tokenizer, num_targets=4)(stars(8))
    batch.pop("labels"), batch.pop("label_errors")
    with pytest.raises(AssertionError, match="parameters are on meta"):
        meta_model(**batch)
    assert checked == []


def test_validation_loss_runs_on_the_model_device(meta_model):
    tokenizer = AstroFeatureExtractor(context_length=16).fit(stars(200, seed=1))
    collator = AstroDataCollator(tokenizer, num_targets=4, seed=0)
    values, errors = collator.encode(stars(32))
    checked = assert_inputs_on_parameter_device(meta_model)
    with pytest.raises(RuntimeError, match=READ_FROM_META):
        train.validation_loss(meta_model, collator, values, errors, batch_size=16, seed=0)
    assert "" in checked and len(checked) > 5, "the whole forward pass ran on the model's device"


def test_predictor_runs_on_its_device(meta_model):
    """(Sampling input errors, `n_samples > 0`, needs a random generator, which the meta device has not.)"""
    tokenizer = AstroFeatureExtractor(context_length=16).fit(stars(200, seed=1))
    checked = assert_inputs_on_parameter_device(meta_model)  # before: the predictor runs a copy of the model
    predictor = AstroPredictor(meta_model, tokenizer, device="meta", attn_implementation="sdpa")
    data = {name: values for name, values in stars(8).items() if name.startswith(("bp", "rp"))}
    with pytest.raises((RuntimeError, NotImplementedError), match=READ_FROM_META):
        predictor.predict(data, request=["teff", "logg"], n_samples=0)
    assert len(checked) > 5, "the encoder and decoder ran on the predictor's device"
