"""modeling_astro.evaluation: metrics, calibration, the XGBoost baseline and the command line."""

import json
from pathlib import Path

import pytest

from modeling_astro import evaluation

pytest_plugins = ["training_fixtures"]


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
            "calibration_error",
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
    # train.py's model card carries these results in its model-index.
    import shutil

    from huggingface_hub import ModelCard

    import train
    from modeling_astro import publishing

    folder = tmp_path / "model"
    shutil.copytree(tiny_trained_checkpoint, folder)
    run_info = json.loads((tiny_trained_checkpoint / "training_args.json").read_text())  # what train.py recorded
    publishing.write_model_card(
        folder,
        results,
        template=train.REPO_ROOT / "model_card.md",
        model_id="model",
        dataset_name=Path(run_info["dataset_dir"]).name,
        model_preset="tiny",
        training_summary=train.training_summary(train.TrainArguments(), run_info),
    )
    card = ModelCard.load(folder / "README.md")
    index = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert card.data.model_name == "model" and len(index) == 3 * len(evaluation.MODEL_INDEX_METRICS)
    for label in ("teff", "logg", "m_h"):
        for metric in evaluation.MODEL_INDEX_METRICS:
            assert index[f"{label}_{metric}"] == pytest.approx(saved[label][metric], rel=1e-12)


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
