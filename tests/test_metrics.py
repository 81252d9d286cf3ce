"""The `evaluate` metric module modeling_astro/metrics/stellar_regression: loading, values, calibration, errors."""

import json
import math
import os

import numpy as np
import pytest

from conftest import run_python
from modeling_astro import evaluation

MAD_TO_STD = 1.482602218505602  # 1 / Phi^-1(3/4)


def numpy_figures(predicted, true, sigma, error, threshold=3.0, bins=10) -> dict:
    """The hand-written numpy metrics the project had before the module, written out independently here."""
    residual = predicted - true
    bias = np.median(residual)
    spread = MAD_TO_STD * np.median(np.abs(residual - bias))
    z = residual / np.sqrt(sigma**2 + error**2)
    pit = np.array([0.5 * (1 + math.erf(value / math.sqrt(2))) for value in z])
    counts = np.array([np.sum((pit >= i / bins) & (pit < (i + 1) / bins)) for i in range(bins)])
    counts[-1] += np.sum(pit == 1.0)
    fractions = counts / len(z)
    cdf = np.array([np.mean(pit <= i / bins) for i in range(1, bins)])
    return {
        "num_examples": len(residual),
        "mad_std": spread,
        "bias": bias,
        "rmse": np.sqrt(np.mean(residual**2)),
        "outlier_fraction": np.mean(np.abs(residual - bias) > threshold * spread),
        "coverage_1sigma": np.mean(np.abs(z) < 1),
        "pit_histogram": fractions.tolist(),
        "calibration_error": np.mean(np.abs(cdf - np.arange(1, bins) / bins)),
    }


def simulated_predictions(n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """Teff-like predictions with a bias, 3% outliers, slightly over-confident sigmas and label errors."""
    rng = np.random.default_rng(seed)
    true = rng.normal(5000.0, 600.0, n)
    error = rng.uniform(20.0, 80.0, n)
    predicted = true + 15.0 + rng.normal(0, 90.0, n)
    predicted[:120] += rng.choice([-1, 1], 120) * 900.0
    return {"predictions": predicted, "references": true, "sigmas": np.full(n, 70.0), "reference_errors": error}


FRESH_PROCESS = """
import json, sys
import evaluate
import numpy as np

data = {key: np.asarray(value) for key, value in json.loads(open(sys.argv[2]).read()).items()}
metric = evaluate.load(sys.argv[1])
print(json.dumps({"class": type(metric).__name__, "module": type(metric).__module__, **metric.compute(**data)}))
"""


def test_evaluate_load_in_a_fresh_process_gives_the_numpy_figures(tmp_path):
    data = simulated_predictions()
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({key: value.tolist() for key, value in data.items()}))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = run_python(str(script), str(evaluation.METRIC_PATH), str(inputs), cwd=tmp_path, env=env)
    computed = json.loads(result.stdout.strip().splitlines()[-1])
    assert computed.pop("class") == "StellarRegression"
    assert computed.pop("module").startswith("evaluate_modules.metrics.stellar_regression")
    expected = numpy_figures(*(data[key] for key in ("predictions", "references", "sigmas", "reference_errors")))
    assert set(computed) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(computed[key], value, rtol=1e-12, err_msg=key)
    assert 0.02 < computed["outlier_fraction"] < 0.05 and computed["coverage_1sigma"] < 0.6827  # over-confident


def test_multi_label_arrays_and_missing_labels():
    data = simulated_predictions(2000, seed=1)
    other = simulated_predictions(2000, seed=2)
    stacked = {key: np.stack([data[key], other[key]], axis=1) for key in data}
    stacked["references"][:300, 1] = np.nan  # stars without the second label
    results = evaluation.load_metric().compute(**stacked, label_names=["teff", "teff2"], ignore_nan=True)
    assert set(results) == {"teff", "teff2"}
    first = numpy_figures(*(data[key] for key in stacked))
    second = numpy_figures(*(other[key][300:] for key in stacked))
    for name, expected in (("teff", first), ("teff2", second)):
        for key, value in expected.items():
            np.testing.assert_allclose(results[name][key], value, rtol=1e-12, err_msg=f"{name} {key}")
    with pytest.raises(ValueError, match=r"Label 'teff2': 300 rows have non-finite \['references'\]"):
        evaluation.load_metric().compute(**stacked, label_names=["teff", "teff2"])
    with pytest.raises(ValueError, match="label_names has 1 names for 2 label columns"):
        evaluation.load_metric().compute(**stacked, label_names=["teff"], ignore_nan=True)


def test_residuals_configuration_needs_no_sigmas():
    data = simulated_predictions(1000, seed=3)
    results = evaluation.load_metric("residuals").compute(
        predictions=data["predictions"], references=data["references"]
    )
    expected = numpy_figures(*(data[key] for key in ("predictions", "references", "sigmas", "reference_errors")))
    assert set(results) == {"num_examples", "mad_std", "bias", "rmse", "outlier_fraction"}
    for key, value in results.items():
        assert value == pytest.approx(expected[key], rel=1e-12)


def test_residual_metrics_on_known_residuals():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1, 20000)
    residual = rng.normal(0.1, 0.5, 20000)
    residual[:1000] += 10.0  # 5% gross outliers
    metrics = evaluation.load_metric("residuals").compute(predictions=true + residual, references=true)
    assert metrics["mad_std"] == pytest.approx(MAD_TO_STD * np.median(np.abs(residual - np.median(residual))))
    assert metrics["mad_std"] == pytest.approx(0.5, rel=0.1) and metrics["bias"] == pytest.approx(
        np.median(residual), rel=1e-9
    )
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(residual**2)), rel=1e-9)
    assert metrics["outlier_fraction"] == pytest.approx(0.05 + 0.0027 * 0.95, abs=0.01)


def test_calibration_of_correct_and_overconfident_sigmas():
    rng = np.random.default_rng(1)
    true = rng.normal(0, 1, 50000)
    predicted = true + rng.normal(0, 0.3, 50000) + rng.normal(0, 0.4, 50000)  # model 0.3, label error 0.4
    metric = evaluation.load_metric()
    calibrated = metric.compute(
        predictions=predicted, references=true, sigmas=np.full(50000, 0.3), reference_errors=np.full(50000, 0.4)
    )
    assert calibrated["coverage_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert np.allclose(calibrated["pit_histogram"], 0.1, atol=0.01) and calibrated["calibration_error"] < 0.01
    overconfident = metric.compute(
        predictions=predicted, references=true, sigmas=np.full(50000, 0.05), reference_errors=np.zeros(50000)
    )
    assert overconfident["coverage_1sigma"] < 0.2
    assert overconfident["pit_histogram"][0] > 0.3 and overconfident["pit_histogram"][-1] > 0.3
    assert overconfident["calibration_error"] > 0.15


def test_unknown_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown configuration 'bogus' of stellar_regression"):
        evaluation.load_metric("bogus")


def test_model_index_carries_the_results():
    from huggingface_hub import ModelCard

    entry = {"mad_std": 50.0, "bias": 1.0, "rmse": 80.0, "outlier_fraction": 0.01, "coverage_1sigma": 0.7}
    results = {"teff": entry, "logg": {**entry, "mad_std": 0.2}, "m_h": {**entry, "calibration_error": 0.03}}
    card = evaluation.add_model_index("---\nlicense: mit\n---\n# model\n", results, "org/astro", "survey")
    loaded = ModelCard(card).data
    assert loaded.model_name == "org/astro" and loaded.license == "mit"
    values = {r.metric_type: r.metric_value for r in loaded.eval_results}
    assert len(loaded.eval_results) == len(values) == 3 * 5 + 1
    assert values["teff_mad_std"] == 50.0 and values["logg_mad_std"] == 0.2 and values["m_h_rmse"] == 80.0
    assert values["m_h_calibration_error"] == 0.03 and "teff_calibration_error" not in values
    assert {r.dataset_split for r in loaded.eval_results} == {"test"}
