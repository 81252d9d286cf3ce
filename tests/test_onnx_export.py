"""Tests of the ONNX export (modeling_astro/onnx_export.py) against PyTorch and the predictor."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.inference import AstroPredictor
from modeling_astro.onnx_export import DECODER_FILE, ENCODER_FILE, check_onnx, main

onnxruntime = pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint (fitted tokenizer) exported with the command line."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = AstroForObservationPrediction(tiny_config(encoder_dropout=0.0, decoder_dropout=0.0))
    tokenizer = AstroFeatureExtractor(context_length=16).fit({"teff": np.array([4000.0, 5000.0, 6500.0])}, ["teff"])
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    main(["--model", str(root / "model"), "--out", str(root / "onnx")])
    return model, tokenizer, root / "onnx"


def test_graphs_match_pytorch_on_new_shapes(exported):
    model, _, folder = exported
    assert (folder / ENCODER_FILE).is_file() and (folder / DECODER_FILE).is_file()
    assert not [path for path in folder.iterdir() if path.name.startswith(".onnx-")]  # no staging leftovers
    assert model.config._attn_implementation == "sdpa"  # the export does not change the model
    for batch, length, requests in ((1, 1, 1), (7, 9, 5), (2, 16, 40)):
        assert check_onnx(model, folder, batch, length, requests) < 1e-4


def test_onnx_pipeline_reproduces_predictor(exported):
    model, tokenizer, folder = exported
    rng = np.random.default_rng(0)
    stars = {"teff": rng.normal(5000, 500, 6), "logg": rng.normal(3, 1, 6), "bprp": rng.normal(1, 0.3, 6)}
    stars["logg"][2] = np.nan
    request = ["m_h", "teff"]
    expected = AstroPredictor(model, tokenizer, device="cpu").predict(stars, request)
    saved_tokenizer = AstroFeatureExtractor.from_pretrained(folder)
    inputs = saved_tokenizer(stars, return_tensors="np")
    request_ids = np.tile(saved_tokenizer.encode_requests(request).numpy(), (6, 1))
    encoder = onnxruntime.InferenceSession(str(folder / ENCODER_FILE))
    decoder = onnxruntime.InferenceSession(str(folder / DECODER_FILE))
    feeds = {name: inputs[name] for name in ("input_ids", "input_values", "attention_mask")}
    (states,) = encoder.run(None, feeds)
    mean, logvar = decoder.run(
        None,
        {"request_ids": request_ids, "encoder_states": states, "attention_mask": inputs["attention_mask"]},
    )
    value, sigma = saved_tokenizer.inverse_transform(mean, logvar, request_ids)
    np.testing.assert_allclose(value, expected[request].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(sigma, expected[[f"{name}_sigma" for name in request]].to_numpy(), rtol=1e-4)


def test_check_detects_a_model_that_differs_from_the_export(exported):
    model, _, folder = exported
    changed = AstroForObservationPrediction(model.config)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.head.mean.bias += 0.5
    assert check_onnx(changed, folder) == pytest.approx(0.5, rel=1e-3)
