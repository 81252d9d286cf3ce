"""Session-scoped fixtures: a small simulated survey and a tiny model trained on it with train.py.

Use them from a test module with ``from training_fixtures import tiny_survey, tiny_trained_checkpoint  # noqa:
F401``.
"""

from pathlib import Path

import pytest

from dataset_builder import build_dataset
from dataset_builder.simulate import simulate_survey

TINY_SURVEY_STARS = 3000


def make_survey(folder: Path, n_stars: int = TINY_SURVEY_STARS, seed: int = 0) -> Path:
    """Simulate `n_stars` stars and build the dataset folder `folder/dataset`; returns it."""
    files = simulate_survey(folder / "raw", n_stars=n_stars, seed=seed, progress=False)
    dataset = folder / "dataset"
    build_dataset(
        gaia_xp=files.xp_files,
        gaia_source=files.gaia_source,
        allstar=files.allstar,
        extra=[files.truth],
        out_dir=dataset,
        num_proc=1,
    )
    return dataset


def tiny_train_args(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    """train.py arguments for a run of a few seconds on a tiny survey (extra arguments override)."""
    options = {
        "--dataset_dir": str(dataset), "--output_dir": str(output_dir), "--model_preset": "tiny",
        "--max_steps": "120", "--restart_steps": "120", "--batch_size": "64", "--learning_rate": "2e-3",
        "--logging_steps": "20", "--eval_steps": "60", "--eval_stars": "256", "--save_steps": "60",
        "--do_eval": "false", "--num_threads": "1",  # one thread: reproducible floats, fast on a shared CPU
    }  # fmt: skip
    return [item for pair in options.items() for item in pair] + list(extra)


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> Path:
    """A dataset folder (train/validation/test parquet + card) of a 3,000-star simulated survey."""
    return make_survey(tmp_path_factory.mktemp("tiny_survey"))


@pytest.fixture(scope="session")
def tiny_trained_checkpoint(tmp_path_factory, tiny_survey) -> Path:
    """Output folder of `train.main` on the tiny survey (tiny preset): model, tokenizer, collator, card."""
    import train

    output_dir = tmp_path_factory.mktemp("tiny_trained") / "model"
    return train.main(tiny_train_args(tiny_survey, output_dir))


@pytest.fixture(scope="session")
def tiny_predictor(tiny_trained_checkpoint):
    """`AstroPredictor` of the tiny trained checkpoint, loaded as a user would (CPU, 128 stars per batch)."""
    from modeling_astro.inference import AstroPredictor

    return AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=128)
