"""AstroDataCollator: the paper's input/target sampling, vectorised, deterministic under a seed."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.data_collator_astro import AstroDataCollator

LABELS = ("teff", "logg", "m_h")


def random_stars(num_stars: int = 200, missing: float = 0.3, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns for every vocabulary name (with errors); a random `missing` share of values is NaN."""
    rng = np.random.default_rng(seed)
    tokenizer = AstroFeatureExtractor()
    data = {}
    for name in tokenizer.observation_names:
        values = rng.normal(3.0, 2.0, num_stars)
        values[rng.random(num_stars) < missing] = np.nan
        data[name] = values
        data[name + "_err"] = rng.uniform(0.01, 0.2, num_stars)
    return data


@pytest.fixture
def tokenizer() -> AstroFeatureExtractor:
    return AstroFeatureExtractor(context_length=16).fit(random_stars(500, missing=0.0, seed=1))


def test_batch_shapes_and_sampling_rules(tokenizer):
    data = random_stars()
    collator = AstroDataCollator(tokenizer, num_targets=5, seed=3)
    values, errors = collator.encode(data)
    batch = collator.sample(values, errors)
    assert set(batch) == {
        "input_ids",
        "input_values",
        "attention_mask",
        "request_ids",
        "labels",
        "label_errors",
    }
    assert batch["input_ids"].shape == batch["input_values"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[1] <= 16 and batch["request_ids"].shape == (200, 5)
    mask = batch["attention_mask"].bool()
    assert mask.sum(dim=1).min() >= 1, "every star keeps at least one input"
    assert torch.equal(mask, batch["input_ids"] != 0)
    present = torch.isfinite(values)
    for star in range(200):
        inputs = batch["input_ids"][star][mask[star]]
        targets = batch["request_ids"][star][batch["request_ids"][star] != 0]
        assert len(set(inputs.tolist())) == len(inputs), "an observation is input at most once"
        assert not set(inputs.tolist()) & set(targets.tolist()), "a target is never an input of the same star"
        assert present[star, inputs - 1].all() and present[star, targets - 1].all()
        assert torch.allclose(batch["input_values"][star][mask[star]], values[star, inputs - 1])
        assert torch.allclose(batch["labels"][star][: len(targets)], values[star, targets - 1])
        assert torch.allclose(batch["label_errors"][star][: len(targets)], errors[star, targets - 1])


def test_values_and_errors_are_standardised_by_the_tokenizer(tokenizer):
    data = random_stars(10)
    values, errors = AstroDataCollator(tokenizer).encode(data)
    teff = tokenizer.token_id("teff")
    expected_value, expected_error = tokenizer.transform(data["teff"], teff, data["teff_err"])
    np.testing.assert_allclose(values[:, teff - 1].numpy(), expected_value, rtol=1e-5)
    np.testing.assert_allclose(errors[:, teff - 1].numpy(), expected_error, rtol=1e-5)


def test_stars_with_few_observations_get_padding_requests(tokenizer):
    data = {
        "teff": np.array([4800.0, 5000.0, np.nan]),
        "logg": np.array([2.5, np.nan, 1.0]),
        "m_h": np.array([0.0, np.nan, np.nan]),
    }
    for pad in (float("nan"), -100.0):
        batch = AstroDataCollator(tokenizer, num_targets=4, label_pad_value=pad)(data)
        assert (batch["request_ids"] != 0).sum(dim=1).tolist() == [2, 0, 0]  # one observation stays an input
        assert batch["attention_mask"].sum(dim=1).tolist() == [1, 1, 1]
        padded = batch["labels"][batch["request_ids"] == 0]
        assert (padded.isnan() if np.isnan(pad) else padded == pad).all()


def test_blanking_keeps_between_one_and_context_length_inputs(tokenizer):
    values, errors = AstroDataCollator(tokenizer).encode(random_stars(2000, missing=0.0))
    counts = AstroDataCollator(tokenizer, seed=0).sample(values, errors)["attention_mask"].sum(dim=1)
    assert counts.min() == 1 and counts.max() == 16 and len(counts.unique()) == 16
    unblanked = (
        AstroDataCollator(tokenizer, max_blanked=0).sample(values, errors)["attention_mask"].sum(dim=1)
    )
    assert (unblanked == 16).all()


def test_deterministic_under_a_seed_and_resumable_from_its_state(tokenizer):
    rows = [dict(zip(random_stars(8).keys(), column)) for column in zip(*random_stars(8).values())]
    first, second = (
        AstroDataCollator(tokenizer, num_targets=3, seed=7),
        AstroDataCollator(tokenizer, num_targets=3, seed=7),
    )
    a, b = first(rows), second(rows)
    for key in a:
        assert torch.equal(a[key].nan_to_num(), b[key].nan_to_num()), key
    other = AstroDataCollator(tokenizer, num_targets=3, seed=8)(rows)
    assert not torch.equal(a["request_ids"], other["request_ids"])
    state = first.state_dict()
    expected = first(rows)
    first.load_state_dict(state)
    assert torch.equal(first(rows)["input_ids"], expected["input_ids"])


def test_label_target_fraction_biases_the_first_target(tokenizer):
    values, errors = AstroDataCollator(tokenizer).encode(random_stars(4000, missing=0.0))
    label_ids = torch.tensor([tokenizer.token_id(name) for name in LABELS])
    shares = {}
    for fraction in (None, 0.8):
        batch = AstroDataCollator(tokenizer, num_targets=4, label_target_fraction=fraction, seed=0).sample(
            values, errors
        )
        shares[fraction] = torch.isin(batch["request_ids"][:, 0], label_ids).float().mean().item()
        assert torch.isin(batch["request_ids"], label_ids).sum() <= 3 * len(values)
    assert abs(shares[None] - 3 / 118) < 0.015  # uniform: the paper's scheme
    assert abs(shares[0.8] - 0.8) < 0.03


def test_prompts_show_the_task_inputs_unblanked_and_target_the_rest(tokenizer):
    data = random_stars(3000, missing=0.2)
    prompts = [["bp0", "bp1", "bp2", "rp0", "rp1", "bprp"], ["teff", "logg", "m_h", "logebv"]]
    collator = AstroDataCollator(  # unblanked, the other stars have 16 inputs: more than any prompt
        tokenizer, num_targets=2, max_blanked=0, prompts=prompts, prompt_fractions=[0.3, 0.2], seed=1
    )
    values, errors = collator.encode(data)
    batch = collator.sample(values, errors)
    inputs, requests = batch["input_ids"], batch["request_ids"]
    assert (batch["attention_mask"].sum(dim=1) <= 16).all()
    unprompted = batch["attention_mask"].sum(dim=1) == 16
    for names, fraction in zip(prompts, [0.3, 0.2]):
        ids = torch.tensor([tokenizer.token_id(name) for name in names])
        prompted = (torch.isin(inputs, ids) | (inputs == 0)).all(dim=1) & ~unprompted
        assert abs(prompted.float().mean().item() - fraction) < 0.04
        # every present observation of the prompt is an input; none is a target
        present = torch.isfinite(values[:, ids - 1]).sum(dim=1)
        assert torch.equal(batch["attention_mask"].sum(dim=1)[prompted], present[prompted])
        assert not torch.isin(requests[prompted], ids).any() and (requests[prompted] != 0).all()


def test_batch_trains_the_model(tokenizer):
    config = tiny_config(context_length=16)
    model = AstroForObservationPrediction(config)
    batch = AstroDataCollator(tokenizer, num_targets=4)(random_stars(16))
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.head.mean.weight.grad.abs().sum() > 0


def test_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="num_targets"):
        AstroDataCollator(tokenizer, num_targets=0)
    with pytest.raises(ValueError, match="label_target_fraction"):
        AstroDataCollator(tokenizer, label_target_fraction=1.5)
    with pytest.raises(ValueError, match="prompt_fractions"):
        AstroDataCollator(tokenizer, prompts=[["bp0"], ["teff"]], prompt_fractions=[0.6, 0.6])
    with pytest.raises(ValueError, match="no observation"):
        AstroDataCollator(tokenizer)({"teff": np.array([5000.0, np.nan])})
    with pytest.raises(ValueError, match="no column named after an observation"):
        AstroDataCollator(tokenizer)({"source_id": np.array([1, 2])})
