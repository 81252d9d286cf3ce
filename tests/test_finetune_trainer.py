"""Fine-tuning a train.py checkpoint with transformers.Trainer after adding a new observation."""

import datasets
import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from conftest import BLOCK_PROJECT, run_python
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.data_collator_astro import AstroDataCollator
from modeling_astro.evaluation import load_split_tables

pytest_plugins = ["training_fixtures"]

NEW = "teff_survey2"  # e.g. Teff from another spectroscopic survey, with its own systematics


def survey_with_new_label(dataset_dir) -> datasets.Dataset:
    """The tiny survey's training split with a NEW column: a shifted, noisier Teff for half of the stars."""
    train = datasets.Dataset.from_pandas(load_split_tables(str(dataset_dir), required=())["train"])
    rng = np.random.default_rng(0)
    new = np.asarray(train["true_teff"], dtype=float) + 80.0 + rng.normal(0, 60.0, len(train))
    new[rng.random(len(train)) < 0.5] = np.nan
    return train.add_column(NEW, new.astype(np.float32)).add_column(NEW + "_err", np.full(len(train), 60.0, np.float32))


class RecordingModel(AstroForObservationPrediction):
    """Records per forward pass the `num_items_in_batch` the Trainer passes and the valid targets."""

    calls: list

    def forward(self, *args, num_items_in_batch=None, **kwargs):
        valid = int(((kwargs["request_ids"] != 0) & torch.isfinite(kwargs["labels"])).sum())
        self.calls.append((None if num_items_in_batch is None else int(num_items_in_batch), valid))
        return super().forward(*args, num_items_in_batch=num_items_in_batch, **kwargs)


def fine_tune(checkpoint, dataset, output_dir, label_pad_value: float, max_steps: int = 4):
    model = RecordingModel.from_pretrained(checkpoint)
    model.calls = []
    tokenizer = AstroFeatureExtractor.from_pretrained(checkpoint)
    old_weight = model.get_input_embeddings().weight.detach().clone()
    model.add_observations([NEW])
    values = np.asarray(dataset[NEW], dtype=float)
    tokenizer.add_observations([NEW], medians=[np.nanmedian(values)], scales=[np.nanstd(values)])
    collator = AstroDataCollator(
        tokenizer,
        num_targets=4,
        label_names=[NEW],
        label_target_fraction=0.9,
        label_pad_value=label_pad_value,
    )
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    return trainer, model, tokenizer, old_weight


def test_trainer_fine_tunes_a_new_observation(tiny_trained_checkpoint, tiny_survey, tmp_path):
    dataset = survey_with_new_label(tiny_survey)
    trainer, model, tokenizer, old_weight = fine_tune(tiny_trained_checkpoint, dataset, tmp_path / "run", -100.0)
    new_id = tokenizer.token_id(NEW)
    embedding = model.get_input_embeddings().weight
    assert new_id == len(old_weight) == embedding.shape[0] - 1 and model.config.observation_names[-1] == NEW
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # The Trainer counts `labels != -100` over each accumulated step: exactly the valid targets of its micro-
    # batches.
    steps = [model.calls[i : i + 2] for i in range(0, len(model.calls), 2)]
    assert len(steps) == 4
    for (count_a, valid_a), (count_b, valid_b) in steps:
        assert count_a == count_b == valid_a + valid_b
    saved = tmp_path / "fine_tuned"
    trainer.save_model(saved)
    tokenizer.save_pretrained(saved)
    reloaded = AstroForObservationPrediction.from_pretrained(saved)
    assert AstroFeatureExtractor.from_pretrained(saved).token_id(NEW) == new_id
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, embedding.detach())


def test_nan_padding_would_overcount_items_for_the_trainer(tiny_trained_checkpoint, tiny_survey, tmp_path):
    dataset = survey_with_new_label(tiny_survey).select(range(64))
    _, model, _, _ = fine_tune(tiny_trained_checkpoint, dataset, tmp_path / "run", float("nan"), max_steps=1)
    (count_a, valid_a), (count_b, valid_b) = model.calls
    assert count_a == 2 * 16 * 4, "Trainer counts every label that is not -100, NaN padding included"
    assert count_a >= valid_a + valid_b


@pytest.mark.parametrize("accumulation", [1, 4])
def test_loss_is_exact_under_gradient_accumulation(tiny_trained_checkpoint, tiny_survey, accumulation):
    """Micro-batch losses with `num_items_in_batch` = all valid targets sum to the full-batch gradient."""
    model = AstroForObservationPrediction.from_pretrained(tiny_trained_checkpoint)
    tokenizer = AstroFeatureExtractor.from_pretrained(tiny_trained_checkpoint)
    collator = AstroDataCollator(tokenizer, num_targets=4, label_pad_value=-100.0)
    rows = load_split_tables(str(tiny_survey), required=())["validation"].iloc[:32].to_dict("records")
    values, errors = collator.encode(rows)
    batch = collator.sample(values, errors, torch.Generator().manual_seed(0))
    model.zero_grad()
    model(**batch).loss.backward()
    expected = model.head.mean.weight.grad.clone()
    model.zero_grad()
    total = int((batch["labels"] != -100).sum())
    size = 32 // accumulation
    for start in range(0, 32, size):
        part = {key: value[start : start + size] for key, value in batch.items()}
        model(**part, num_items_in_batch=total).loss.backward()
    torch.testing.assert_close(model.head.mean.weight.grad, expected, rtol=1e-4, atol=1e-6)


SHIPPED_COLLATOR = BLOCK_PROJECT + """
from transformers import AutoFeatureExtractor
from transformers.dynamic_module_utils import get_class_from_dynamic_module

folder = sys.argv[1]
collator_class = get_class_from_dynamic_module("data_collator_astro.AstroDataCollator", folder)
tokenizer = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
stars = {"teff": [5000.0, 4500.0], "logg": [4.4, 2.0], "bprp": [0.8, 1.2]}
batch = collator_class(tokenizer, num_targets=2)(stars)
assert "transformers_modules" in collator_class.__module__, collator_class.__module__
print("OK", sorted(batch), tuple(batch["request_ids"].shape))
"""


def test_collator_ships_with_the_checkpoint(tiny_trained_checkpoint, tmp_path):
    import os
    script = tmp_path / "collator.py"
    script.write_text(SHIPPED_COLLATOR)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = run_python(str(script), str(tiny_trained_checkpoint), cwd=tmp_path, env=env)
    assert "OK ['attention_mask', 'input_ids', 'input_values', 'label_errors', 'labels', 'request_ids'] (2, 2)" in (
        result.stdout
    )


def test_trainer_compute_metrics_uses_the_metric_module(tiny_trained_checkpoint, tiny_survey, tmp_path):
    """`Trainer.predict` with `trainer_compute_metrics`: the figures equal numpy on the de-standardised outputs."""
    from modeling_astro.evaluation import EVALUATION_LABELS, trainer_compute_metrics

    model = AstroForObservationPrediction.from_pretrained(tiny_trained_checkpoint)
    tokenizer = AstroFeatureExtractor.from_pretrained(tiny_trained_checkpoint)
    test = datasets.Dataset.from_pandas(load_split_tables(str(tiny_survey), required=())["test"].iloc[:300])
    collator = AstroDataCollator(
        tokenizer, num_targets=3, label_names=list(EVALUATION_LABELS), label_target_fraction=1.0, label_pad_value=-100.0
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "eval"),
        per_device_eval_batch_size=64,
        remove_unused_columns=False,
        label_names=["labels", "request_ids", "label_errors"],
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        compute_metrics=trainer_compute_metrics(tokenizer, EVALUATION_LABELS),
    )
    output = trainer.predict(test)
    mean, logvar = output.predictions[:2]
    labels, request_ids, label_errors = output.label_ids
    for name in EVALUATION_LABELS:
        token = tokenizer.token_id(name)
        scale = tokenizer.scales[token - 1]  # token id 0 is padding
        chosen = (request_ids == token) & (labels != -100) & np.isfinite(labels)
        assert chosen.sum() > 50
        residual = (mean[chosen] - labels[chosen]) * scale
        sigma = np.exp(0.5 * logvar[chosen]) * scale
        z = residual / np.sqrt(sigma**2 + (label_errors[chosen] * scale) ** 2)
        bias = np.median(residual)
        spread = 1.482602218505602 * np.median(np.abs(residual - bias))
        metrics = output.metrics
        assert metrics[f"test_{name}_num_examples"] == chosen.sum()
        assert metrics[f"test_{name}_mad_std"] == pytest.approx(spread, rel=1e-5)
        assert metrics[f"test_{name}_bias"] == pytest.approx(bias, rel=1e-5, abs=1e-6 * scale)
        assert metrics[f"test_{name}_rmse"] == pytest.approx(np.sqrt(np.mean(residual**2)), rel=1e-5)
        assert metrics[f"test_{name}_coverage_1sigma"] == pytest.approx(np.mean(np.abs(z) < 1), abs=1e-9)
