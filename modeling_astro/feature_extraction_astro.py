"""Numeric-value tokenizer of the Astro model: observation names -> token ids, physical values -> standardised."""

import difflib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from astropy.stats import mad_std
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.utils import cached_file

from .observations import DEFAULT_OBSERVATION_NAMES, ERROR_SUFFIX


class ObservationNameError(KeyError):
    """An observation name the model does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


def _column_names(data: Any) -> list[str]:
    for attribute in ("colnames", "column_names"):  # astropy Table, datasets Dataset
        if hasattr(data, attribute):
            return list(getattr(data, attribute))
    if hasattr(data, "columns"):  # pandas DataFrame
        return [str(name) for name in data.columns]
    if isinstance(data, Mapping) or hasattr(data, "keys"):  # dict of arrays, datasets batch
        return [str(name) for name in data.keys()]
    raise TypeError(
        f"Cannot read observations from a {type(data).__name__}: pass a dict of arrays, a pandas DataFrame, an "
        "astropy Table or a `datasets` batch/dataset."
    )


def _column_values(data: Any, name: str) -> np.ndarray:
    column = data[name]
    if hasattr(column, "to_numpy"):  # pandas, possibly with pd.NA
        column = column.to_numpy(dtype=float, na_value=np.nan)
    elif isinstance(column, np.ma.MaskedArray):  # astropy MaskedColumn, numpy masked array
        column = column.astype(float).filled(np.nan)
    elif hasattr(column, "unit") and hasattr(column, "value"):  # astropy Quantity
        column = column.value
    return np.atleast_1d(np.array(column, dtype=float))  # None (datasets' missing value) -> NaN


def suggest_names(name: str, vocabulary: Sequence[str]) -> str:
    """A ' Did you mean ...?' hint listing the vocabulary names closest to `name` (empty if none is close)."""
    close = difflib.get_close_matches(name, vocabulary, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class AstroTokenizer(FeatureExtractionMixin):
    r"""
    Numeric-value tokenizer of the Astro model. A star is a set of (observation name, value) pairs: this class
    maps names to token ids (`observation_names[i]` -> `i + 1`, 0 is padding), standardises values per observation
    by a median and a MAD-std fitted from data (`(value - median) / scale`), turns NaN/inf into padding, packs each
    star's present observations to the left and converts predictions back to physical units.

    Args:
        observation_names (`list[str]`, *optional*):
            The vocabulary, in token order. Defaults to the paper's 118 names.
        medians (`list[float]`, *optional*):
            Per-observation median, in physical units (defaults to 0).
        scales (`list[float]`, *optional*):
            Per-observation MAD-std, in physical units (defaults to 1).
        context_length (`int`, defaults to 64):
            Most observations per star the model accepts.

    Example:

    ```python
    >>> import numpy as np
    >>> tokenizer = AstroTokenizer().fit({"teff": np.array([4500.0, 5000.0, 5800.0])})
    >>> batch = tokenizer({"teff": np.array([4800.0, np.nan]), "logg": np.array([2.5, 4.4])}, return_tensors="pt")
    >>> batch["input_ids"]
    tensor([[114, 115],
            [115,   0]])
    ```
    """

    model_input_names = ["input_ids", "input_values", "attention_mask"]

    def __init__(
        self,
        observation_names: Sequence[str] | None = None,
        medians: Sequence[float] | None = None,
        scales: Sequence[float] | None = None,
        context_length: int = 64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.observation_names = list(observation_names or DEFAULT_OBSERVATION_NAMES)
        size = len(self.observation_names)
        self.medians = [float(m) for m in (medians if medians is not None else np.zeros(size))]
        self.scales = [float(s) for s in (scales if scales is not None else np.ones(size))]
        self.context_length = int(context_length)
        if len(set(self.observation_names)) != size:
            raise ValueError("`observation_names` must be unique.")
        if len(self.medians) != size or len(self.scales) != size:
            raise ValueError(
                f"`medians` ({len(self.medians)}) and `scales` ({len(self.scales)}) need one entry per observation "
                f"name ({size})."
            )
        if not all(np.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError("Every entry of `scales` must be finite and positive.")
        self._token_ids = {name: i + 1 for i, name in enumerate(self.observation_names)}

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of token ids, padding included."""
        return len(self.observation_names) + 1

    def token_id(self, name: str) -> int:
        """Token id of an observation name; raises `ObservationNameError` with suggestions for an unknown name."""
        try:
            return self._token_ids[name]
        except KeyError:
            raise ObservationNameError(
                f"Unknown observation name {name!r}: this model knows {len(self.observation_names)} observations "
                f"({', '.join(self.observation_names[:3])}, ..., {self.observation_names[-1]})."
                + suggest_names(name, self.observation_names)
            ) from None

    def encode_requests(self, names: Iterable[str], batch_size: int | None = None) -> torch.LongTensor:
        """Token ids of requested observations: shape `(num_requests,)`, or `(batch_size, num_requests)`."""
        ids = torch.tensor([self.token_id(name) for name in names], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("Request at least one observation.")
        return ids if batch_size is None else ids.expand(batch_size, -1).contiguous()

    def add_observations(self, names: Iterable[str], medians: Iterable[float], scales: Iterable[float]) -> list[int]:
        """Append new observation names (with their standardisation) to the vocabulary; returns their token ids."""
        new_ids = []
        for name, median, scale in zip(names, medians, scales, strict=True):
            if name in self._token_ids:
                raise ValueError(f"Observation {name!r} is already in the vocabulary (id {self._token_ids[name]}).")
            self.observation_names.append(name)
            self.medians.append(float(median))
            self.scales.append(float(scale))
            self._token_ids[name] = len(self.observation_names)
            new_ids.append(self._token_ids[name])
        return new_ids

    # ------------------------------------------------------------------ standardisation
    def fit(self, data: Any, observation_names: Sequence[str] | None = None) -> "AstroTokenizer":
        """Set each observation's median and MAD-std (physical units) from the finite values in `data`."""
        names = self._select_names(data, observation_names)
        unfitted = []
        for name in names:
            values = _column_values(data, name)
            values = values[np.isfinite(values)]
            scale = float(mad_std(values)) if values.size else np.nan
            if not np.isfinite(scale) or scale <= 0:
                unfitted.append(name)
                continue
            self.medians[self._token_ids[name] - 1] = float(np.median(values))
            self.scales[self._token_ids[name] - 1] = scale
        if unfitted:
            warnings.warn(
                f"No spread to fit for {unfitted} (no finite values or a constant column): they keep median "
                f"{[self.medians[self._token_ids[n] - 1] for n in unfitted]} and scale "
                f"{[self.scales[self._token_ids[n] - 1] for n in unfitted]}.",
                stacklevel=2,
            )
        return self

    def _lookup(self, table: Sequence[float], token_ids: Any) -> Any:
        lookup = np.concatenate([[np.nan], table])  # index 0: padding
        if isinstance(token_ids, torch.Tensor):
            return torch.as_tensor(lookup, dtype=torch.float64, device=token_ids.device)[token_ids]
        return lookup[np.asarray(token_ids)]

    def transform(self, values: Any, token_ids: Any, errors: Any | None = None) -> Any:
        """Standardise physical `values` (and 1-sigma `errors`) of observations `token_ids`."""
        median, scale = self._lookup(self.medians, token_ids), self._lookup(self.scales, token_ids)
        standardised = (values - median) / scale
        return standardised if errors is None else (standardised, errors / scale)

    def inverse_transform(self, mean: Any, logvar: Any, token_ids: Any) -> tuple[Any, Any]:
        """Physical value and 1-sigma of predictions `(mean, logvar)` of observations `token_ids`."""
        median, scale = self._lookup(self.medians, token_ids), self._lookup(self.scales, token_ids)
        exp = torch.exp if isinstance(logvar, torch.Tensor) else np.exp
        return mean * scale + median, exp(0.5 * logvar) * scale

    # ------------------------------------------------------------------ encoding
    def _select_names(self, data: Any, observation_names: Sequence[str] | None) -> list[str]:
        columns = _column_names(data)
        if observation_names is not None:
            for name in observation_names:
                self.token_id(name)
                if name not in columns:
                    raise KeyError(f"Observation {name!r} was requested but the data has no such column.")
            return list(observation_names)
        names = [name for name in self.observation_names if name in columns]
        for column in set(columns) - set(names):
            base = column[: -len(ERROR_SUFFIX)] if column.endswith(ERROR_SUFFIX) else column
            if base in self._token_ids:
                continue
            hint = suggest_names(base, self.observation_names)
            if difflib.get_close_matches(base, self.observation_names, n=1, cutoff=0.85):
                raise ObservationNameError(f"Column {column!r} is not an observation this model knows.{hint}")
        if not names:
            raise ValueError(
                f"None of the columns {columns[:10]} is an observation this model knows "
                f"({', '.join(self.observation_names[:3])}, ..., {self.observation_names[-1]})."
            )
        return names

    def __call__(
        self,
        data: Any,
        errors: Mapping[str, Any] | None = None,
        observation_names: Sequence[str] | None = None,
        padding: str = "longest",
        truncation: bool = False,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Encode stars into model inputs.

        Args:
            data: observations in physical units, one column per observation name: a dict of arrays, a pandas
                DataFrame, an astropy Table or a `datasets` batch. NaN, inf and masked values are missing. Columns
                that are not observation names are ignored unless they look like a misspelt one (then an error
                names it); 1-sigma errors are read from `<name>_err` columns when present.
            errors: 1-sigma errors per observation name, overriding the `<name>_err` columns.
            observation_names: use exactly these columns (each must be a known name).
            padding: `"longest"` pads to the star with most observations, `"max_length"` to `context_length`.
            truncation: if `False` (default) a star with more observations than `context_length` is an error; if
                `True` only its first `context_length` observations in vocabulary order are kept.
            return_tensors: `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.

        Returns:
            `BatchFeature` with `input_ids` (int64), `input_values` (float32, standardised), `input_errors`
            (float32, standardised 1-sigma; 0 where unknown) and `attention_mask` (int64, 1 = observation).
        """
        names = self._select_names(data, observation_names)
        values = np.stack([_column_values(data, name) for name in names], axis=1)
        error_values = np.stack(
            [
                _column_values(errors, name)
                if errors is not None and name in errors
                else _column_values(data, name + ERROR_SUFFIX)
                if name + ERROR_SUFFIX in _column_names(data)
                else np.zeros(len(values))
                for name in names
            ],
            axis=1,
        )
        token_ids = np.array([self._token_ids[name] for name in names])
        present = np.isfinite(values)
        counts = present.sum(axis=1)
        if len(values) and counts.max() > self.context_length and not truncation:
            rows = np.flatnonzero(counts > self.context_length)
            raise ValueError(
                f"{len(rows)} star(s) (first at row {rows[0]}) have {counts.max()} observations, more than the "
                f"context length {self.context_length}: pass `observation_names=` to choose at most "
                f"{self.context_length}, or `truncation=True` to keep the first {self.context_length} in vocabulary "
                "order."
            )
        standardised, standardised_errors = self.transform(values, token_ids, error_values)
        if padding not in ("longest", "max_length"):
            raise ValueError(f"`padding` must be 'longest' or 'max_length', got {padding!r}.")
        longest = int(min(counts.max(initial=0), self.context_length))
        length = self.context_length if padding == "max_length" else longest
        order = np.argsort(~present, axis=1, kind="stable")[:, :length]
        mask = np.take_along_axis(present, order, axis=1)
        features = {
            "input_ids": np.where(mask, token_ids[order], 0).astype(np.int64),
            "input_values": np.where(mask, np.take_along_axis(standardised, order, axis=1), 0.0).astype(np.float32),
            "input_errors": np.where(
                mask, np.nan_to_num(np.take_along_axis(standardised_errors, order, axis=1)), 0.0
            ).astype(np.float32),
            "attention_mask": mask.astype(np.int64),
        }
        missing_columns = length - order.shape[1]  # padding="max_length" with fewer columns than the context
        features = {key: np.pad(value, ((0, 0), (0, missing_columns))) for key, value in features.items()}
        return BatchFeature(features, tensor_type=return_tensors)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "AstroTokenizer":
        """Load a tokenizer and check that its vocabulary matches the model config saved beside it, if any."""
        tokenizer = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        config_file = cached_file(
            pretrained_model_name_or_path,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as f:
                model_names = json.load(f).get("observation_names")
            tokenizer.check_vocabulary(model_names, source=str(pretrained_model_name_or_path))
        return tokenizer

    def check_vocabulary(self, model_observation_names: Sequence[str] | None, source: str = "the model") -> None:
        """Raise if the model's observation names differ from this tokenizer's (token ids would be misread)."""
        if model_observation_names is None or list(model_observation_names) == self.observation_names:
            return
        only_model = sorted(set(model_observation_names) - set(self.observation_names))
        only_tokenizer = sorted(set(self.observation_names) - set(model_observation_names))
        raise ValueError(
            f"The tokenizer's vocabulary ({len(self.observation_names)} names) does not match the model config of "
            f"{source} ({len(model_observation_names)} names); only in the model: {only_model[:10]}, only in the "
            f"tokenizer: {only_tokenizer[:10]}"
            + ("" if only_model or only_tokenizer else " (same names, different order)")
            + ". Save the tokenizer and the model together."
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_token_ids", None)
        # transformers records classes named "*Tokenizer" as (slow, fast) text-tokenizer pairs; a feature
        # extractor's auto_map entry must be the plain "module.Class" string.
        auto_map = output.get("auto_map", {})
        if isinstance(auto_map.get("AutoFeatureExtractor"), (list, tuple)):
            auto_map["AutoFeatureExtractor"] = auto_map["AutoFeatureExtractor"][0]
        return output


__all__ = ["AstroTokenizer", "ObservationNameError", "ERROR_SUFFIX", "suggest_names"]
