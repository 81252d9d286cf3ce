"""modeling_astro.evaluation: metrics, calibration, the XGBoost baseline and the command line."""

import json

import numpy as np
import pytest
from astropy.stats import mad_std

from modeling_astro import evaluation

pytest_plugins = ["training_fixtures"]


def test_residual_metrics_on_known_residuals():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1, 20000)
    residual = rng.normal(0.1, 0.5, 20000)
    residual[:1000] += 10.0  # 5% gross outliers
    metrics = evaluation.residual_metrics(true + residual, true)
    assert metrics["mad_std"] == pytest.approx(mad_std(residual), rel=1e-9)
    assert metrics["mad_std"] == pytest.approx(0.5, rel=0.1) and metrics["bias"] == pytest.approx(
        np.median(residual), rel=1e-9
    )
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(residual**2)), rel=1e-9)
    assert metrics["outlier_fraction"] == pytest.approx(0.05 + 0.0027 * 0.95, abs=0.01)


def test_calibration_of_correct_and_overconfident_sigmas():
    rng = np.random.default_rng(1)
    true = rng.normal(0, 1, 50000)
    predicted = true + rng.normal(0, 0.3, 50000) + rng.normal(0, 0.4, 50000)  # model 0.3, label error 0.4
    calibrated = evaluation.calibration_metrics(predicted, np.full(50000, 0.3), true, np.full(50000, 0.4))
    assert calibrated["coverage_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert np.allclose(calibrated["pit_histogram"], 0.1, atol=0.01)
    overconfident = evaluation.calibration_metrics(predicted, np.full(50000, 0.05), true, np.zeros(50000))
    assert overconfident["coverage_1sigma"] < 0.2
    assert overconfident["pit_histogram"][0] > 0.3 and overconfident["pit_histogram"][-1] > 0.3


def test_format_table_marks_which_is_better():
    entry = {
        "mad_std": 1.0,
        "bias": 0.1,
        "rmse": 2.0,
        "outlier_fraction": 0.01,
        "coverage_1sigma": 0.7,
        "xgboost_mad_std": 1.5,
        "xgboost_bias": 0.0,
        "xgboost_rmse": 2.0,
        "xgboost_outlier_fraction": 0.02,
    }
    results = {"teff": entry, "logg": {**entry, "xgboost_mad_std": 0.5}, "m_h": entry}
    rows = evaluation.format_table(results).splitlines()
    assert rows[1].endswith("yes") and rows[2].endswith("no") and len(rows) == 4
    assert evaluation.format_table(results, markdown=True).startswith("| label | model MAD-std")


def test_command_line_writes_results_and_plots(tiny_trained_checkpoint, tiny_survey, tmp_path, capsys):
    results = evaluation.main(
        ["--model", str(tiny_trained_checkpoint), "--data", str(tiny_survey), "--output_dir", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for label in ("teff", "logg", "m_h"):
        entry = saved[label]
        assert {
            "mad_std",
            "bias",
            "rmse",
            "outlier_fraction",
            "coverage_1sigma",
            "xgboost_mad_std",
            "xgboost_bias",
            "xgboost_rmse",
            "xgboost_outlier_fraction",
        } <= set(entry)
        assert entry["num_stars"] > 100 and 0 < entry["mad_std"] < entry["rmse"] * 10
        assert 0 < entry["xgboost_mad_std"] and 0 <= entry["coverage_1sigma"] <= 1
        assert sum(entry["pit_histogram"]) == pytest.approx(1.0)
    assert saved["teff"]["xgboost_mad_std"] < 400, "XGBoost learns Teff from XP on the simulated survey"
    assert (tmp_path / "predicted_vs_true.png").stat().st_size > 10_000
    assert "Teff [K]" in capsys.readouterr().out


def test_missing_evaluation_columns_are_named(tiny_survey, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(tiny_survey, broken)
    for shard in (broken / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns(["bprp"]), shard)
    (broken / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*.parquet\n" for s in ("train", "validation", "test"))
        + "---\n"
    )
    with pytest.raises(ValueError, match="bprp"):
        evaluation.load_split_tables(str(broken))
