"""Data collator of the Astro model: the paper's self-supervised sampling of inputs and targets, per batch."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .feature_extraction_astro import AstroFeatureExtractor

DEFAULT_LABEL_NAMES = ("teff", "logg", "m_h")


class AstroDataCollator:
    r"""
    Turns dataset rows into training batches with the self-supervised sampling of Leung & Bovy (2024), vectorised
    over the batch. Per star: choose `num_targets` targets among its present observations (at least one observation
    is left as input), shuffle the remaining present observations, keep up to `context_length` of them and blank a
    random number `0..min(max_blanked, kept - 1)` of those, so that every star keeps at least one input. A target is
    never an input of the same star; the model sees it only through its request id.

    The paper draws one target per star and epoch; several targets per star and step (`num_targets > 1`) use the
    same encoder pass for more supervised signal. `label_target_fraction` biases the choice towards `label_names`
    (e.g. the spectroscopic labels) while the rest of the targets stay self-supervised. `prompts` show a share of the
    stars the input set of a downstream task instead (e.g. the paper's evaluation: XP coefficients 0-29 and the
    colours; or the labels, to generate spectra), so that the model also trains on the inputs it will be asked
    about; `train.py --prompts` takes them by name from `observations.PROMPTS`.

    Args:
        tokenizer ([`AstroFeatureExtractor`]): standardises values and errors and maps names to token ids.
        num_targets (`int`, defaults to 1): targets (requests) per star; stars with fewer candidates get request
            id 0 and label `label_pad_value`, which the loss ignores.
        context_length (`int`, *optional*): most inputs per star; defaults to the tokenizer's.
        max_blanked (`int`, defaults to 59): most inputs blanked per star (the paper's 59 for a context of 64).
        label_names (`Sequence[str]`, defaults to `("teff", "logg", "m_h")`): observations favoured as targets.
        label_target_fraction (`float`, *optional*): probability that a star's first target is one of its present
            `label_names` (later targets are drawn without replacement with the same per-star weights); `None`
            draws targets uniformly, as the paper does.
        prompts (`Sequence[Sequence[str]]`, *optional*): input sets of downstream tasks.
        prompt_fractions (`Sequence[float]`, *optional*): for each prompt, the probability that a star gets it:
            its inputs are then all of its present observations of the prompt, none blanked, and its targets are
            drawn among its other observations (a star without observations inside and outside the prompt is
            sampled as usual). At most 1 in total.
        label_pad_value (`float`, defaults to NaN): label of padding requests. Use `-100.0` with
            `transformers.Trainer`, which counts the targets of a batch as `labels != -100` for
            `num_items_in_batch`.
        seed (`int`, defaults to 0): seed of the collator's own `torch.Generator`; the same seed and the same
            sequence of batches give the same samples. [`sample`] also accepts an explicit generator.

    Example:

    ```python
    >>> collator = AstroDataCollator(tokenizer, num_targets=4, label_target_fraction=0.75, seed=0)
    >>> batch = collator([dataset[i] for i in range(8)])  # AstroForObservationPrediction.forward keys
    >>> loss = model(**batch).loss
    ```
    """

    def __init__(
        self,
        tokenizer: AstroFeatureExtractor,
        num_targets: int = 1,
        context_length: int | None = None,
        max_blanked: int = 59,
        label_names: Sequence[str] = DEFAULT_LABEL_NAMES,
        label_target_fraction: float | None = None,
        prompts: Sequence[Sequence[str]] = (),
        prompt_fractions: Sequence[float] = (),
        label_pad_value: float = float("nan"),
        seed: int = 0,
    ):
        if num_targets < 1:
            raise ValueError(f"`num_targets` must be at least 1, got {num_targets}.")
        if max_blanked < 0:
            raise ValueError(f"`max_blanked` must be >= 0, got {max_blanked}.")
        if label_target_fraction is not None and not 0.0 < label_target_fraction <= 1.0:
            raise ValueError(
                f"`label_target_fraction` must be in (0, 1] or None (uniform targets), got {label_target_fraction}."
            )
        if (
            len(prompts) != len(prompt_fractions)
            or any(fraction < 0 for fraction in prompt_fractions)
            or sum(prompt_fractions) > 1.0
        ):
            raise ValueError(
                "`prompt_fractions` needs one probability >= 0 per prompt, at most 1 in total; got "
                f"{list(prompt_fractions)} for {len(prompts)} prompt(s)."
            )
        self.tokenizer = tokenizer
        self.prompts = [list(names) for names in prompts]
        self.prompt_fractions = [float(fraction) for fraction in prompt_fractions]
        self.num_targets = int(num_targets)
        self.context_length = int(context_length or tokenizer.context_length)
        self.max_blanked = int(max_blanked)
        self.label_names = list(label_names)
        self.label_target_fraction = label_target_fraction
        self.label_pad_value = float(label_pad_value)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------ state (for exact resumption)
    def state_dict(self) -> dict[str, Any]:
        """The generator state (the collator can be given to `Accelerator.register_for_checkpointing`)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator state saved by [`state_dict`]."""
        self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ encoding
    def encode(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Standardised values and errors of every vocabulary observation, shape `(num_stars, vocab_size - 1)` each:
        column `i` is token id `i + 1`, NaN marks a missing value, a missing error is 0.

        `data` is a list of dataset rows (dicts), a dict of columns or a pandas DataFrame, in physical units
        with `<name>_err` error columns, read and checked by the tokenizer's `read_table`; vocabulary
        observations without a column are missing for every star.
        """
        names = self.tokenizer.observation_names
        read, read_values, read_errors = self.tokenizer.read_table(data)
        columns = [self.tokenizer.token_id(name) - 1 for name in read]
        values = np.full((len(read_values), len(names)), np.nan)
        errors = np.zeros((len(read_values), len(names)))
        values[:, columns] = read_values
        errors[:, columns] = read_errors
        token_ids = np.arange(1, len(names) + 1)
        values, errors = self.tokenizer.transform(values, token_ids, errors)
        values[~np.isfinite(values)] = np.nan
        errors = np.where(np.isfinite(errors), errors, 0.0)
        return torch.from_numpy(values.astype(np.float32)), torch.from_numpy(errors.astype(np.float32))

    # ------------------------------------------------------------------ sampling
    def _vocabulary_mask(self, names: Sequence[str]) -> torch.Tensor:
        """Boolean mask over the columns of [`encode`] that are the observations `names`."""
        mask = torch.zeros(len(self.tokenizer.observation_names), dtype=torch.bool)
        for name in names:
            mask[self.tokenizer.token_id(name) - 1] = True
        return mask

    def _target_keys(self, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Keys whose descending order per star is a weighted draw without replacement."""
        keys = torch.log(torch.rand(present.shape, generator=generator).clamp_min(1e-12))
        if self.label_target_fraction is not None:
            is_label = self._vocabulary_mask(self.label_names)
            labels = present & is_label
            num_labels = labels.sum(dim=1, keepdim=True).clamp_min(1)
            num_others = (present & ~is_label).sum(dim=1, keepdim=True).clamp_min(1)
            fraction = self.label_target_fraction
            weight = (
                torch.full_like(keys, torch.inf)
                if fraction == 1.0
                else fraction / (1 - fraction) * (num_others / num_labels).expand_as(keys)
            )
            keys = torch.where(labels, keys / weight, keys)
        return keys.masked_fill(~present, -torch.inf)

    def sample(
        self, values: torch.Tensor, errors: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Draw inputs and targets from encoded stars (see [`encode`]) with `generator` (default: the collator's).

        Returns:
            `dict` with `input_ids`, `input_values`, `attention_mask` (`(batch, longest input)`), `request_ids`,
            `labels` and `label_errors` (`(batch, num_targets)`, standardised).
        """
        generator = self.generator if generator is None else generator
        present = torch.isfinite(values)
        num_present = present.sum(dim=1)
        if (num_present == 0).any():
            rows = (num_present == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"Row(s) {rows[:10]} of the batch have no observation the model knows; drop them from the dataset."
            )
        batch_size = values.shape[0]
        rows = torch.arange(batch_size)[:, None]

        # Prompted stars (if any): their inputs are their observations of the prompt, their targets the others.
        prompt_inputs = torch.zeros_like(present)
        if self.prompts:
            masks = torch.stack([self._vocabulary_mask(names) for names in self.prompts])
            bounds = torch.tensor(self.prompt_fractions).cumsum(0)
            choice = torch.searchsorted(bounds, torch.rand(batch_size, generator=generator), right=True)
            chosen = choice < len(self.prompts)
            prompt_inputs[chosen] = present[chosen] & masks[choice[chosen]]
            usable = prompt_inputs.any(dim=1) & (present & ~prompt_inputs).any(dim=1)
            prompt_inputs &= usable[:, None]
        prompted = prompt_inputs.any(dim=1)
        targetable = present & ~prompt_inputs

        # Targets: the first `num_targets` of a weighted random order, leaving at least one input per star.
        target_order = torch.argsort(self._target_keys(targetable, generator), dim=1, descending=True)
        target_order = target_order[:, : self.num_targets]
        num_chosen = torch.clamp(torch.minimum(num_present - 1, targetable.sum(dim=1)), max=self.num_targets)
        is_target = torch.arange(target_order.shape[1])[None, :] < num_chosen[:, None]
        request_ids = torch.where(is_target, target_order + 1, 0)
        labels = torch.where(is_target, values[rows, target_order], self.label_pad_value)
        label_errors = torch.where(is_target, errors[rows, target_order], 0.0)

        # Inputs: the other present observations in random order, up to the context, minus a random number blanked.
        candidates = present.clone()
        candidates[rows.expand_as(target_order)[is_target], target_order[is_target]] = False
        candidates = torch.where(prompted[:, None], prompt_inputs, candidates)
        keys = torch.rand(values.shape, generator=generator).masked_fill(~candidates, 2.0)
        input_order = torch.argsort(keys, dim=1)
        kept = torch.clamp(candidates.sum(dim=1), max=self.context_length)
        most_blanked = torch.where(prompted, 0, torch.clamp(kept - 1, max=self.max_blanked))
        blanked = (torch.rand(batch_size, generator=generator) * (most_blanked + 1)).floor().long()
        num_inputs = kept - blanked
        width = int(num_inputs.max())
        input_order = input_order[:, :width]
        attention_mask = torch.arange(width)[None, :] < num_inputs[:, None]
        return {
            "input_ids": torch.where(attention_mask, input_order + 1, 0),
            "input_values": torch.where(attention_mask, values[rows, input_order], 0.0),
            "attention_mask": attention_mask.long(),
            "request_ids": request_ids,
            "labels": labels,
            "label_errors": label_errors,
        }

    def __call__(self, rows: Any) -> dict[str, torch.Tensor]:
        """Encode dataset rows (a list of dicts, as a `DataLoader` passes them) and sample a batch."""
        values, errors = self.encode(rows)
        return self.sample(values, errors)


__all__ = ["AstroDataCollator", "DEFAULT_LABEL_NAMES"]
