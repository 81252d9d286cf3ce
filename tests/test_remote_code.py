"""A saved checkpoint folder loads with trust_remote_code in a fresh process where this project is not importable."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from transformers import AutoFeatureExtractor

from conftest import BLOCK_PROJECT, random_batch, tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.inference import AstroPredictor

FRESH_PROCESS = BLOCK_PROJECT + textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

    folder, data = sys.argv[1], torch.load(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    bare = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    with torch.no_grad():
        out = model(**data["batch"])
        encoder_states = bare(**{k: v for k, v in data["batch"].items() if k != "request_ids"})
    encoded = tokenizer({"teff": [5000.0, None], "logg": [2.5, 4.0]}, return_tensors="pt")
    assert torch.equal(out.mean, data["mean"]) and torch.equal(out.logvar, data["logvar"]), "outputs differ"
    assert torch.equal(encoder_states.encoder_last_hidden_state, data["encoder"]), "encoder states differ"
    assert torch.equal(encoded["input_values"], data["encoded"]), "tokenizer differs"
    print("OK", type(config).__name__, type(model).__name__, type(tokenizer).__name__)
    """
)


def test_saved_folder_loads_with_trust_remote_code_without_the_package(tmp_path):
    config = tiny_config(observation_names=["teff", "logg", "m_h", "bprp"])
    torch.manual_seed(0)
    model = AstroForObservationPrediction(config).eval()
    tokenizer = AstroFeatureExtractor(observation_names=config.observation_names, medians=[4800, 2.5, -0.2, 1.0],
                               scales=[500, 1.0, 0.3, 0.3], context_length=config.context_length)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert {"modeling_astro.py", "configuration_astro.py", "feature_extraction_astro.py", "model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    batch = random_batch(config, num_inputs=3)
    with torch.no_grad():
        out = model(**batch)
        encoder = model.astro(**{k: v for k, v in batch.items() if k != "request_ids"}).encoder_last_hidden_state
    encoded = tokenizer({"teff": [5000.0, None], "logg": [2.5, 4.0]}, return_tensors="pt")["input_values"]
    torch.save({"batch": batch, "mean": out.mean, "logvar": out.logvar, "encoder": encoder, "encoded": encoded},
               tmp_path / "expected.pt")
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules_cache")
    result = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "expected.pt")], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK AstroConfig AstroForObservationPrediction AstroFeatureExtractor" in result.stdout


def test_checkpoint_saved_under_the_old_name_astrotokenizer_still_loads(tmp_path):
    """`AstroFeatureExtractor` was `AstroTokenizer`: a folder whose preprocessor_config.json names the old class (in
    `feature_extractor_type` and `auto_map`) loads through the deprecated alias, and saving it again writes the new
    name."""
    config = tiny_config(observation_names=["teff", "logg", "m_h", "bprp"])
    extractor = AstroFeatureExtractor(observation_names=config.observation_names, medians=[4800, 2.5, -0.2, 1.0],
                                      scales=[500, 1.0, 0.3, 0.3], context_length=config.context_length)
    folder = tmp_path / "old_checkpoint"
    AstroForObservationPrediction(config).save_pretrained(folder)
    extractor.save_pretrained(folder)
    path = folder / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    # a plain "module.Class" string: transformers only writes (slow, fast) pairs for classes named "*Tokenizer"
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_astro.AstroFeatureExtractor"}
    assert saved["feature_extractor_type"] == "AstroFeatureExtractor"
    saved["auto_map"]["AutoFeatureExtractor"] = "feature_extraction_astro.AstroTokenizer"
    saved["feature_extractor_type"] = "AstroTokenizer"
    path.write_text(json.dumps(saved))
    stars = {"teff": [5000.0, None], "logg": [2.5, 4.0]}
    expected = extractor(stars, return_tensors="pt")["input_values"]

    with pytest.warns(FutureWarning, match="renamed `AstroFeatureExtractor`"):
        remote = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    assert "transformers_modules" in type(remote).__module__ and type(remote).__name__ == "AstroFeatureExtractor"
    direct = AstroFeatureExtractor.from_pretrained(folder)
    for loaded in (remote, direct):
        assert torch.equal(loaded(stars, return_tensors="pt")["input_values"], expected)

    # the predictor reads star tables with its own classes: the checkpoint's copy is rebuilt from its settings
    with pytest.warns(FutureWarning, match="renamed `AstroFeatureExtractor`"):
        predictor = AstroPredictor.from_pretrained(str(folder), device="cpu")
    assert type(predictor.tokenizer) is AstroFeatureExtractor
    reference = AstroPredictor(AstroForObservationPrediction.from_pretrained(folder), direct, device="cpu")
    pd.testing.assert_frame_equal(predictor.predict(stars, ["m_h"]), reference.predict(stars, ["m_h"]))
    with pytest.raises(TypeError, match="needs an AstroFeatureExtractor"):
        AstroPredictor(reference.model, object())

    direct.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "preprocessor_config.json").read_text())
    assert resaved["feature_extractor_type"] == "AstroFeatureExtractor"
    assert resaved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_astro.AstroFeatureExtractor"}


def test_old_name_astrotokenizer_is_a_deprecated_alias():
    import modeling_astro
    from modeling_astro import feature_extraction_astro

    for module in (modeling_astro, feature_extraction_astro):
        with pytest.warns(FutureWarning, match="`AstroTokenizer` was renamed `AstroFeatureExtractor`"):
            assert module.AstroTokenizer is AstroFeatureExtractor
    with pytest.raises(AttributeError, match="no attribute 'AstroTokeniser'"):
        feature_extraction_astro.AstroTokeniser  # noqa: B018
