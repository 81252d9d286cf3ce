"""Every saved checkpoint ships its pipeline: ``transformers.pipeline(model=<folder>, trust_remote_code=True)``.

The checkpoint of train.py (and any Trainer checkpoint kept below it) carries ``pipeline_astro.py`` beside
``modeling_astro.py`` and name it in config.json's ``custom_pipelines``; `pipeline()` with no task builds it, in this
process and in a fresh one where the project's packages cannot be imported, and its predictions equal
`AstroPredictor`'s on the same rows (dict, DataFrame, list of row dicts).
"""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pandas as pd
import pytest
from transformers import pipeline

from conftest import BLOCK_PROJECT
from modeling_astro.inference import AstroPredictor

pytest_plugins = ["training_fixtures"]  # the session fixtures tiny_survey and tiny_trained_checkpoint

REQUEST = ["teff", "logg", "m_h"]
INPUTS = ["bprp", "jh", "jk", "bp0", "bp1", "rp0", "rp1"]


@pytest.fixture(scope="module")
def rows(tiny_survey) -> pd.DataFrame:
    """40 stars of the test split, their colours and first XP coefficients (some missing values kept)."""
    test = datasets.load_dataset(str(tiny_survey), split="test").to_pandas()
    return test[INPUTS].iloc[:40].reset_index(drop=True)


@pytest.fixture(scope="module")
def expected(tiny_trained_checkpoint, rows) -> pd.DataFrame:
    return AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu").predict(rows, REQUEST)


def test_every_saved_checkpoint_names_and_ships_its_pipeline(tiny_trained_checkpoint):
    folders = [path.parent for path in tiny_trained_checkpoint.glob("**/config.json")]
    assert tiny_trained_checkpoint in folders, folders  # and any Trainer checkpoint kept below it
    for folder in folders:
        custom = json.loads((folder / "config.json").read_text())["custom_pipelines"]
        assert custom == {
            "astro-observation-prediction": {
                "impl": "pipeline_astro.AstroObservationPipeline",
                "pt": ["AutoModelForPreTraining"],
            }
        }, folder
        assert {"pipeline_astro.py", "inference.py", "modeling_astro.py"} <= {p.name for p in folder.iterdir()}, folder


def test_pipeline_of_a_saved_folder_equals_the_predictor(tiny_trained_checkpoint, rows, expected):
    pipe = pipeline(model=str(tiny_trained_checkpoint), trust_remote_code=True, device="cpu")  # task from config
    assert type(pipe).__name__ == "AstroObservationPipeline"
    assert type(pipe).__module__.startswith("transformers_modules."), "the pipeline code comes from the checkpoint"
    assert pipe.task == "astro-observation-prediction"
    table = pipe(rows, request=REQUEST)
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-5, atol=1e-6)
    assert np.isfinite(table.to_numpy()).all()
    columns = pipe({name: rows[name].to_numpy() for name in INPUTS}, request=REQUEST)
    pd.testing.assert_frame_equal(columns, table)
    records = pipe(rows.iloc[:5].to_dict("records"), request=REQUEST)
    assert records == table.iloc[:5].to_dict("records")  # a list of row dicts: one dict per star
    one = pipe(rows.iloc[0].to_dict(), request="teff")  # one star as a dict of scalars
    assert list(one.columns) == ["teff", "teff_sigma"] and one["teff"].iloc[0] == pytest.approx(table["teff"].iloc[0])


def test_pipeline_errors_are_readable(tiny_trained_checkpoint, rows):
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # the pipeline code is the checkpoint's
        pipeline("astro-observation-prediction", model=str(tiny_trained_checkpoint), trust_remote_code=False)
    pipe = pipeline(model=str(tiny_trained_checkpoint), trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match="request="):
        pipe(rows)
    with pytest.raises(TypeError, match="one dict per star"):
        pipe([[0.9, 0.4]], request=REQUEST)
    with pytest.raises(Exception, match="tef"):  # ObservationNameError with a suggestion
        pipe(rows, request=["tef"])


FRESH_PROCESS = BLOCK_PROJECT + textwrap.dedent(
    """
    import pandas as pd
    from transformers import pipeline

    folder, rows, out = sys.argv[1:4]
    pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
    assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
    assert type(pipe.feature_extractor).__module__.startswith("transformers_modules."), type(pipe.feature_extractor)
    pipe(pd.read_parquet(rows), request=sys.argv[4].split(",")).to_parquet(out)
    print("OK", type(pipe).__name__)
    """
)


def test_pipeline_loads_without_the_package(tiny_trained_checkpoint, rows, expected, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    rows.to_parquet(tmp_path / "rows.parquet")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # the remote code is copied from the folder afresh
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_trained_checkpoint), str(tmp_path / "rows.parquet"),
         str(tmp_path / "table.parquet"), ",".join(REQUEST)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK AstroObservationPipeline" in result.stdout
    table = pd.read_parquet(tmp_path / "table.parquet")
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-5, atol=1e-6)
