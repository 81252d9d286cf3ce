"""Loading by repo id from a real Hub-compatible server: olah (a self-hosted Hugging Face mirror) on localhost.

olah serves local git repositories (``mirrors-path``, offline mode) through the Hub's HTTP API. The test creates
a model repository (a saved tiny model with its remote code, two commits) and a dataset repository, starts olah,
and in a fresh process with ``HF_ENDPOINT`` pointed at it, an empty ``HF_HOME`` and this project's packages
blocked from import, loads the model with ``AutoModel`` / ``AutoModelForPreTraining`` (``trust_remote_code``,
at the first commit), the tokenizer with ``AutoFeatureExtractor``, the pipeline with
``transformers.pipeline(model=<repo id>)`` (its code named by config.json's ``custom_pipelines``; predictions equal
`AstroPredictor`'s on the same rows) and the dataset with ``datasets.load_dataset(..., streaming=True)``.

olah needs ``psutil<6``, so it lives in its own virtual environment: ``$ASTRO_OLAH_CLI`` names its ``olah-cli``
(``.ci/run`` creates it); without it the test is skipped. olah ignores HTTP Range requests, so the dataset is
JSON Lines (read front to back), not parquet (whose footer is read by a ranged request).
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import BLOCK_PROJECT, free_port, random_batch, stop_process_group, tiny_config, wait_for_http
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.inference import AstroPredictor

OLAH_CLI = os.environ.get("ASTRO_OLAH_CLI") or shutil.which("olah-cli")
pytestmark = pytest.mark.skipif(
    not (OLAH_CLI and Path(OLAH_CLI).is_file() and shutil.which("git")),
    reason="no olah server: set ASTRO_OLAH_CLI to olah-cli of a venv with `pip install olah==0.5.4` (.ci/run "
    "does it), and git must be on PATH",
)

LOAD = BLOCK_PROJECT + textwrap.dedent(
    """
    import datasets
    import pandas as pd
    import torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining, pipeline

    revision, data, stars_file, table_file = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3], sys.argv[4]
    model = AutoModelForPreTraining.from_pretrained("astro/tiny", trust_remote_code=True, revision=revision).eval()
    bare = AutoModel.from_pretrained("astro/tiny", trust_remote_code=True, revision=revision).eval()
    tokenizer = AutoFeatureExtractor.from_pretrained("astro/tiny", trust_remote_code=True, revision=revision)
    assert type(model).__module__.startswith("transformers_modules.astro.tiny."), type(model).__module__
    with torch.no_grad():
        out = model(**data["batch"])
    assert torch.equal(out.mean, data["mean"]) and torch.equal(out.logvar, data["logvar"]), "not the first commit"
    encoded = tokenizer({"teff": [5000.0, None], "logg": [2.5, 4.0]}, return_tensors="pt")["input_values"]
    assert torch.equal(encoded, data["encoded"]), "tokenizer differs"
    pipe = pipeline(model="astro/tiny", trust_remote_code=True, revision=revision, device="cpu")  # task: config
    assert type(pipe).__module__.startswith("transformers_modules.astro.tiny."), type(pipe).__module__
    assert type(pipe.feature_extractor).__module__.startswith("transformers_modules."), type(pipe.feature_extractor)
    pipe(pd.read_json(stars_file, orient="records", lines=True), request=["teff", "logg"]).to_json(
        table_file, orient="records", lines=True, double_precision=15
    )
    print("PIPELINE", type(pipe).__name__, pipe.task)
    stars = datasets.load_dataset("astro/stars", streaming=True)
    assert isinstance(stars["train"], datasets.IterableDataset)
    print("ROWS", {split: [row["source_id"] for row in rows] for split, rows in stars.items()})
    print("OK", type(model).__name__, type(bare).__name__, type(tokenizer).__name__)
    """
)

DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.jsonl
  - split: test
    path: data/test-*.jsonl
---
# Tiny star table for the Hub server test
"""


def git_commit(folder: Path, message: str) -> str:
    """Commit everything in ``folder`` (a new repository on ``main`` if needed); the commit id."""

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args]
        return subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True).stdout.strip()

    if not (folder / ".git").exists():
        git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", message)
    return git("rev-parse", "HEAD")


@pytest.fixture
def hub(tmp_path):
    """olah on a free localhost port, offline, serving ``tmp_path/mirrors/{models,datasets}/<org>/<name>``."""
    port = free_port()
    config = tmp_path / "olah.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [basic]
            host = "127.0.0.1"
            port = {port}
            mirror-netloc = "127.0.0.1:{port}"
            mirror-lfs-netloc = "127.0.0.1:{port}"
            repos-path = "{tmp_path / "olah_cache"}"
            mirrors-path = ["{tmp_path / "mirrors"}"]

            [accessibility]
            offline = true
            """
        )
    )
    (tmp_path / "mirrors").mkdir()
    log = tmp_path / "olah.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [OLAH_CLI, "-c", str(config)], cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/whoami-v2", timeout=120, process=process, log=log)
        yield f"http://127.0.0.1:{port}", tmp_path / "mirrors", log
    finally:
        stop_process_group(process)


def test_repo_ids_resolve_against_a_local_hub_server(hub, tmp_path):
    endpoint, mirrors, log = hub
    config = tiny_config(observation_names=["teff", "logg", "m_h", "bprp"])
    tokenizer = AstroFeatureExtractor(
        observation_names=config.observation_names, medians=[4800, 2.5, -0.2, 1.0], scales=[500, 1.0, 0.3, 0.3],
        context_length=config.context_length,
    )  # fmt: skip
    repo = mirrors / "models" / "astro" / "tiny"
    torch.manual_seed(0)
    first = AstroForObservationPrediction(config).eval()
    first.save_pretrained(repo)
    tokenizer.save_pretrained(repo)
    first_commit = git_commit(repo, "first weights")
    torch.manual_seed(1)
    AstroForObservationPrediction(config).save_pretrained(repo)  # main moves on: revision= must pick the first
    git_commit(repo, "other weights")
    batch = random_batch(config, num_inputs=3)
    with torch.no_grad():
        out = first(**batch)
    encoded = tokenizer({"teff": [5000.0, None], "logg": [2.5, 4.0]}, return_tensors="pt")["input_values"]
    torch.save({"batch": batch, "mean": out.mean, "logvar": out.logvar, "encoded": encoded}, tmp_path / "expected.pt")
    stars = pd.DataFrame({"bprp": [0.9, 1.3, np.nan, 0.7], "m_h": [-0.3, 0.1, 0.0, np.nan]})
    stars.to_json(tmp_path / "stars.jsonl", orient="records", lines=True, double_precision=15)
    expected = AstroPredictor(first, tokenizer, device="cpu").predict(stars, ["teff", "logg"])

    dataset = mirrors / "datasets" / "astro" / "stars"
    (dataset / "data").mkdir(parents=True)
    (dataset / "README.md").write_text(DATASET_CARD)
    for split, ids in (("train", [1, 2, 3, 4]), ("test", [7, 8])):
        rows = pd.DataFrame({"source_id": ids, "bprp": np.linspace(0.6, 1.4, len(ids))})
        rows.to_json(dataset / "data" / f"{split}-00000-of-00001.jsonl", orient="records", lines=True)
    git_commit(dataset, "data")

    script = tmp_path / "load.py"
    script.write_text(LOAD)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_DATASETS_OFFLINE="0")
    result = subprocess.run(
        [sys.executable, str(script), first_commit, str(tmp_path / "expected.pt"), str(tmp_path / "stars.jsonl"),
         str(tmp_path / "table.jsonl")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + "\nserver log:\n" + log.read_text()[-2000:]
    assert "OK AstroForObservationPrediction AstroModel AstroFeatureExtractor" in result.stdout
    assert "PIPELINE AstroObservationPipeline astro-observation-prediction" in result.stdout
    table = pd.read_json(tmp_path / "table.jsonl", orient="records", lines=True, dtype=False)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False, check_exact=False, rtol=1e-5, atol=1e-6)
    assert "ROWS {'train': [1, 2, 3, 4], 'test': [7, 8]}" in result.stdout
    served = log.read_text()
    assert f"/astro/tiny/resolve/{first_commit}/modeling_astro.py" in served, "the remote code came from elsewhere"
    assert f"/astro/tiny/resolve/{first_commit}/pipeline_astro.py" in served, "the pipeline code came from elsewhere"
    assert "/datasets/astro/stars/resolve/" in served
    assert not list((tmp_path / "hf_home").glob("**/modeling_astro/__init__.py")), "the package leaked in"
