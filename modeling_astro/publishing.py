"""The final model folder of a training run, its model card and its upload to the Hugging Face Hub.

`save_final` writes a Hub-ready folder (weights, config, feature extractor, the model's and the collator's code,
the training arguments), swapped in whole so that a kill leaves the old or the new model; `write_model_card` fills
the repository's `model_card.md` template (with a `model-index` of the evaluation); `push_to_hub` uploads the folder
without its checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

from .evaluation import add_model_index, format_table
from .io_utils import INTERNAL_PREFIX, atomic_write_text, link_tree, replace_folder
from .training_checkpoints import CHECKPOINTS

# an older model's files, not carried into the folder of a new model (its evaluation and card are written again)
FINAL_MODEL_FILES = ("model*.safetensors", "model.safetensors.index.json", "eval_results.json", "README.md", "*.png")
COLLATOR_CODE = Path(__file__).resolve().parent / "data_collator_astro.py"  # shipped so the folder trains on


def save_final(model: Any, feature_extractor: Any, output_dir: Path, training_args: Mapping[str, Any]) -> None:
    """
    Save model, feature extractor, collator code and `training_args.json` into a new copy of `output_dir` swapped in
    whole (`replace_folder`): a kill at any instant leaves the old or the new model, never a mix. The new copy keeps
    the folder's other files (checkpoints, metrics, run.json: hard links, no copying) but not an older model's
    weights, evaluation and card, which the evaluation and `write_model_card` write again for the new model.
    """
    kept = f"{output_dir} is unchanged, its checkpoints intact"
    with replace_folder(output_dir, kept=kept) as staging:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
        shutil.copy(COLLATOR_CODE, staging)
        (staging / "training_args.json").write_text(json.dumps(dict(training_args), indent=1))
        written = {path.name for path in staging.iterdir()}
        for path in output_dir.iterdir():
            if path.name in written or path.name.startswith(INTERNAL_PREFIX):
                continue
            if not any(path.match(pattern) for pattern in FINAL_MODEL_FILES):
                link_tree(path, staging / path.name)


def write_model_card(
    output_dir: Path,
    results: dict | None,
    template: Path,
    model_id: str,
    dataset_name: str,
    model_preset: str,
    training_summary: str,
) -> None:
    """
    Fill the model card `template` (the repository's `model_card.md`) into `output_dir/README.md`: the model's size
    read from its saved config, `training_summary` (one sentence of how it was trained) and the evaluation table and
    `model-index` of `results` (`evaluation.evaluate`'s; None: not evaluated).
    """
    from .configuration_astro import AstroConfig
    from .modeling_astro import AstroForObservationPrediction

    config = AstroConfig.from_pretrained(output_dir)
    card = Template(Path(template).read_text()).substitute(
        model_id=model_id,
        dataset_name=dataset_name,
        num_parameters=f"{AstroForObservationPrediction(config).num_parameters():,}",
        model_preset=model_preset,
        training_summary=training_summary,
        evaluation_table=format_table(results, markdown=True)
        if results is not None
        else "Not evaluated (trained with `--do_eval false`): run `python -m modeling_astro.evaluation`.",
    )
    if results is not None:
        card = add_model_index(card, results, model_id, dataset_name)
    atomic_write_text(output_dir / "README.md", card)


def push_to_hub(output_dir: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Hub repository if needed, upload the model folder (no checkpoints); return the URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        ignore_patterns=[f"{CHECKPOINTS}/**", ".tmp*", "*.tmp"],
        commit_message="Upload Astro model trained with train.py",
    )
    return commit.commit_url


__all__ = ["FINAL_MODEL_FILES", "push_to_hub", "save_final", "write_model_card"]
