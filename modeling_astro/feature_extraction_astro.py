"""Numeric-value tokenizer of the Astro model: observation names -> token ids, physical values -> standardised."""

import difflib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
import torch
from astropy.stats import mad_std
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.utils import cached_file

from .observations import DEFAULT_OBSERVATION_NAMES, DEFAULT_OBSERVATION_UNITS, ERROR_SUFFIX, ERROR_SUFFIX_ALIASES

#: Columns that are known not to be observations and are ignored without a report (the dataset's identifier and
#: its `true_*` truth columns).
NON_OBSERVATION_COLUMNS: tuple[str, ...] = ("source_id",)
NON_OBSERVATION_PREFIXES: tuple[str, ...] = ("true_",)
#: Most |standardised value| (and standardised 1-sigma error) the tokenizer accepts: values this many scales from
#: the observation's median are wrong units or sentinels (the simulated survey's largest is ~500, g_fakemag of
#: nearby stars), and far larger ones overflow the model's float32 arithmetic into NaN.
MAX_STANDARDISED_VALUE = 1e4
#: Strings read as a missing value in a text column (case-insensitive, surrounding spaces ignored).
MISSING_STRINGS = frozenset({"", "nan", "null", "none", "na", "n/a", "--"})
INVALID_POLICIES = ("raise", "mask")


class ObservationNameError(KeyError):
    """An observation name the model does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownColumnsWarning(UserWarning):
    """Columns of the input that are not observations of the model (and are therefore not used)."""


class InvalidValueWarning(UserWarning):
    """Values or errors that `invalid="mask"` treated as missing."""


class StarTable:
    r"""
    The one reader of star tables: a dict of arrays (or of scalars: one star), a pandas DataFrame, a pandas Series
    (one star), an astropy Table/QTable or Row, a numpy structured array, a list of row dicts, or a `datasets`
    Dataset/batch, seen as named columns of equal length. [`numeric`] returns a column as float64 with NaN for
    missing values, after checking its type, shape and unit; every error names the column and, for bad values,
    the first bad row.

    Args:
        data: the table.
        row_offset (`int`, defaults to 0): number of the first row, in error messages (set by [`slice`]).
    """

    def __init__(self, data: Any, row_offset: int = 0):
        self.row_offset = int(row_offset)
        if isinstance(data, StarTable):
            self.data, self.columns, self.num_rows = data.data, list(data.columns), data.num_rows
            self.row_offset, self._keys = data.row_offset, data._keys
            return
        self._keys: dict[str, Any] = {}
        if hasattr(data, "with_format") and hasattr(data, "column_names"):
            if not hasattr(data, "__len__"):
                raise TypeError(
                    "An IterableDataset (streaming) has no length: predict it with `AstroPredictor.predict_stream`, "
                    "or pass a `datasets.Dataset`."
                )
            data = data.with_format("numpy")
            self.num_rows = len(data)
            names = list(data.column_names)
        elif isinstance(data, pd.Series):  # one star: index = column names
            data = {str(key): [value] for key, value in data.items()}
            data, names = self._from_mapping(data)
        elif isinstance(data, pd.DataFrame):
            names = [str(name) for name in data.columns]
            self._keys = dict(zip(names, data.columns))
            self.num_rows = len(data)
        elif hasattr(data, "colnames") and hasattr(data, "table") and hasattr(data, "index"):  # astropy Row
            data = data.table[data.index : data.index + 1]
            names, self.num_rows = list(data.colnames), 1
        elif hasattr(data, "colnames"):  # astropy Table / QTable
            names, self.num_rows = list(data.colnames), len(data)
        elif isinstance(data, np.ndarray) and data.dtype.names:  # numpy structured array
            data, names = self._from_mapping({name: data[name] for name in data.dtype.names})
        elif isinstance(data, Mapping) or (hasattr(data, "keys") and hasattr(data, "__getitem__")):
            data, names = self._from_mapping(data)
        elif (
            isinstance(data, Sequence)
            and not isinstance(data, (str, bytes))
            and all(isinstance(row, Mapping) for row in data)
        ):  # list of row dicts (dataset rows)
            if not data:
                raise ValueError("The input holds no star (an empty list of rows).")
            keys = list(dict.fromkeys(key for row in data for key in row))
            data, names = self._from_mapping({key: [row.get(key) for row in data] for key in keys})
        else:
            raise TypeError(
                f"Cannot read stars from a {type(data).__name__}: pass a dict of arrays, a pandas DataFrame or "
                "Series (one star), an astropy Table, a list of row dicts or a `datasets` Dataset/batch."
            )
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"The input has duplicate column names {duplicated}: keep one column per name.")
        self.data, self.columns = data, names

    def _from_mapping(self, data: Any) -> tuple[dict[str, Any], list[str]]:
        """Dict of columns; scalars become one-star columns; lengths must agree."""
        columns = {}
        for key in data.keys():
            value = data[key]
            if not isinstance(value, (np.ndarray, pd.Series, pd.Index)) and not hasattr(value, "unit"):
                try:
                    value = np.asarray(value)
                except ValueError as error:  # ragged lists
                    raise ValueError(f"Column {str(key)!r} cannot be read as an array ({error}).") from None
            columns[str(key)] = value
        scalars = [name for name, value in columns.items() if np.ndim(value) == 0]
        if scalars and len(scalars) < len(columns):
            lengths = sorted({len(value) for name, value in columns.items() if name not in scalars})
            raise ValueError(
                f"Column(s) {scalars[:5]} hold a single value but the others have {lengths} rows: pass one value "
                "per star in every column (scalars only for a single star)."
            )
        if scalars:
            columns = {
                name: value.reshape(1) if hasattr(value, "reshape") else np.asarray([value])
                for name, value in columns.items()
            }
        lengths = {name: len(value) for name, value in columns.items()}
        if len(set(lengths.values())) > 1:
            by_length = {}
            for name, length in lengths.items():
                by_length.setdefault(length, name)
            shown = ", ".join(f"{name!r} has {length}" for length, name in by_length.items())
            raise ValueError(
                f"The columns of the input have different lengths ({shown} rows): every column needs one value "
                "per star."
            )
        self.num_rows = next(iter(lengths.values()), 0)
        return columns, list(columns)

    def slice(self, start: int, stop: int) -> "StarTable":
        """Rows `start:stop` as a `StarTable` (error messages keep the rows' numbers in the whole table)."""
        if isinstance(self.data, pd.DataFrame):
            part = self.data.iloc[start:stop]
        elif isinstance(self.data, Mapping):
            part = {
                key: value.iloc[start:stop] if isinstance(value, pd.Series) else value[start:stop]
                for key, value in self.data.items()
            }
        else:  # astropy Table, numpy-formatted datasets.Dataset (-> dict of arrays)
            part = self.data[start:stop]
        return StarTable(part, row_offset=self.row_offset + start)

    def error_column(self, name: str) -> str | None:
        """The column holding the 1-sigma errors of observation `name` (`name_err`, or an accepted alias such as
        the Gaia archive's `name_error`), or None; two of them for one observation are an error."""
        found = [name + suffix for suffix in (ERROR_SUFFIX, *ERROR_SUFFIX_ALIASES) if name + suffix in self.columns]
        if len(found) > 1:
            raise ValueError(f"Columns {found} both give the 1-sigma error of {name!r}: keep one of them.")
        return found[0] if found else None

    def select(self, names: Sequence[str]) -> dict[str, Any]:
        """
        The columns of the observations `names` that the table has, with their error columns, unchanged (units
        and masks kept, read later by [`AstroFeatureExtractor.read_table`]): a task's inputs restricted to these
        observations, so that a prediction cannot see, e.g., a dataset row's own answer.
        """
        selected = {}
        for name in names:
            if name in self.columns:
                for column in (name, self.error_column(name)):
                    if column is not None:
                        selected[column] = self.data[self._keys.get(column, column)]
        return selected

    def raw(self, name: str) -> np.ndarray:
        """Column `name` as a numpy array, unchanged (e.g. `source_id`)."""
        if name not in self.columns:
            raise KeyError(f"Column {name!r} is not in the input; it has {self.columns[:10]}.")
        column = self.data[self._keys.get(name, name)]
        return column.to_numpy() if hasattr(column, "to_numpy") else np.asarray(column)

    def numeric(self, name: str, unit: str | u.UnitBase | None = None, checked_unit: bool = True) -> np.ndarray:
        """
        Column `name` as float64 of shape `(num_rows,)`, NaN where missing (NaN, None, masked, pd.NA, empty or
        'null' strings). A column with an astropy unit is converted to `unit` (an error if it cannot be; with
        `unit=None` only a dimensionless column is accepted unless `checked_unit=False`). Non-numeric entries,
        booleans and columns that are not one value per star are errors naming the column.
        """
        column = self.data[self._keys.get(name, name)]
        column_unit = getattr(column, "unit", None)
        if isinstance(column, (pd.Series, pd.Index)):
            dtype = column.dtype
            if isinstance(dtype, np.dtype):  # numpy dtypes: checked by _as_float
                values = column.to_numpy()
            elif pd.api.types.is_bool_dtype(dtype):
                values = np.zeros(len(column), dtype=bool)
            elif pd.api.types.is_numeric_dtype(dtype):  # nullable Float64/Int64, pd.NA -> NaN
                values = column.to_numpy(dtype=float, na_value=np.nan)
            else:  # string, category, ...
                values = column.astype(object).to_numpy(dtype=object)
            mask = None
        else:
            mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else None
            values = np.ma.getdata(column)
            values = values.value if hasattr(values, "value") and hasattr(values, "unit") else np.asarray(values)
        values = self._as_float(name, values)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
            mask = None if mask is None else mask.reshape(values.shape)
        elif values.ndim == 0:
            values = values.reshape(1)
        if values.ndim != 1 or len(values) != self.num_rows:
            raise ValueError(
                f"Column {name!r} has shape {np.shape(values)}: an observation takes one value per star, a 1-D "
                f"column of {self.num_rows} value(s) (or shape ({self.num_rows}, 1))."
            )
        if mask is not None and mask.any():
            values = np.where(mask.reshape(values.shape), np.nan, values)
        if column_unit is not None and checked_unit:
            values = self._convert(name, values, u.Unit(column_unit), unit)
        return values

    def _as_float(self, name: str, values: np.ndarray) -> np.ndarray:
        kind = values.dtype.kind
        if kind in "iuf":
            return values.astype(np.float64, copy=False)
        if kind == "b":
            raise ValueError(f"Column {name!r} holds booleans: an observation must be a number (NaN for missing).")
        if kind in "OUS":
            flat = values.ravel()
            if kind == "S":
                flat = np.char.decode(flat, "utf-8", errors="replace")
            flat = np.array(flat, dtype=object)
            text = np.array([isinstance(v, str) for v in flat])
            missing = np.array(pd.isna(pd.Series(flat, dtype=object)), dtype=bool)
            if text.any():
                missing[text] = [v.strip().lower() in MISSING_STRINGS for v in flat[text]]
            if values.ndim == 1 and any(isinstance(v, (np.ndarray, list, tuple)) for v in flat[:1]):
                raise ValueError(
                    f"Column {name!r} holds arrays: an observation takes one number per star (split array "
                    "columns such as XP coefficients into one column per observation: bp0, bp1, ...)."
                )
            bools = np.array([isinstance(v, (bool, np.bool_)) for v in flat], dtype=bool)
            converted = pd.to_numeric(pd.Series(np.where(missing, None, flat), dtype=object), errors="coerce")
            converted = converted.to_numpy(dtype=float, na_value=np.nan)
            bad = (~missing & np.isnan(converted)) | bools
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"Column {name!r} holds a value that is not a number at row {self.row_offset + row}: "
                    f"{flat[row]!r} ({int(bad.sum())} such value(s)); pass numbers, NaN for missing."
                )
            return np.where(missing, np.nan, converted).reshape(values.shape)
        raise ValueError(
            f"Column {name!r} has dtype {values.dtype}, not a real number: an observation must be a number (NaN for "
            "missing)."
        )

    @staticmethod
    def _convert(name: str, values: np.ndarray, column_unit: u.UnitBase, unit: str | u.UnitBase | None) -> np.ndarray:
        if unit is None:
            if column_unit.is_equivalent(u.dimensionless_unscaled):
                return (values * column_unit).to_value(u.dimensionless_unscaled)
            raise ValueError(
                f"Column {name!r} has unit {column_unit} but the model's observation {name!r} has no declared "
                "unit: pass plain numbers in the units the model was trained on."
            )
        target = u.Unit(unit)
        if target == u.dimensionless_unscaled and column_unit == u.dimensionless_unscaled:
            return values
        try:
            return (values * column_unit).to_value(target)
        except u.UnitConversionError:
            function = getattr(target, "function_unit", None)
            if function is not None and column_unit == function:  # 'dex' for dex(cm / s2): the same numbers
                return values
            raise ValueError(
                f"Column {name!r} has unit {column_unit!s}, which cannot be converted to {target!s}, the unit of "
                f"observation {name!r}: give it in {target!s} (or a convertible unit)."
            ) from None


def _column_names(data: Any) -> list[str]:
    """Column names of any input [`StarTable`] reads."""
    return StarTable(data).columns


def suggest_names(name: str, vocabulary: Sequence[str]) -> str:
    """A ' Did you mean ...?' hint listing the vocabulary names closest to `name` (empty if none is close)."""
    close = difflib.get_close_matches(name, vocabulary, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class AstroFeatureExtractor(FeatureExtractionMixin):
    r"""
    Feature extractor of the Astro model (its numeric-value tokenizer; `AstroTokenizer` is the deprecated old name
    of this class, kept so that older checkpoints load). A star is a set of (observation name, value) pairs: this class
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
        observation_units (`list[str | None]`, *optional*):
            Per-observation astropy unit string of the values ("" = dimensionless, `None` = no unit: a column
            carrying one is an error); columns with a unit are converted to it. Defaults to
            `DEFAULT_OBSERVATION_UNITS` for the paper's names, `None` for others.

    Example:

    ```python
    >>> import numpy as np
    >>> tokenizer = AstroFeatureExtractor().fit({"teff": np.array([4500.0, 5000.0, 5800.0])})
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
        observation_units: Sequence[str | None] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.observation_names = list(observation_names or DEFAULT_OBSERVATION_NAMES)
        size = len(self.observation_names)
        self.medians = [float(m) for m in (medians if medians is not None else np.zeros(size))]
        self.scales = [float(s) for s in (scales if scales is not None else np.ones(size))]
        self.context_length = int(context_length)
        if observation_units is None:
            observation_units = [DEFAULT_OBSERVATION_UNITS.get(name) for name in self.observation_names]
        self.observation_units = [None if unit is None else str(unit) for unit in observation_units]
        if len(self.observation_units) != size:
            raise ValueError(
                f"`observation_units` ({len(self.observation_units)}) needs one entry per observation name ({size})."
            )
        for name, unit in zip(self.observation_names, self.observation_units):
            if unit is not None:
                try:
                    u.Unit(unit)
                except ValueError as error:
                    raise ValueError(
                        f"`observation_units` of {name!r}: {unit!r} is not an astropy unit ({error})."
                    ) from None
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

    def add_observations(
        self,
        names: Iterable[str],
        medians: Iterable[float],
        scales: Iterable[float],
        units: Iterable[str | None] | None = None,
    ) -> list[int]:
        """
        Append new observation names (with their standardisation, in physical units, and optionally their
        astropy unit strings) to the vocabulary; returns their token ids.
        """
        names, medians, scales = list(names), list(medians), list(scales)
        units = [None] * len(names) if units is None else list(units)
        new_ids = []
        for name, median, scale, unit in zip(names, medians, scales, units, strict=True):
            if name in self._token_ids:
                raise ValueError(f"Observation {name!r} is already in the vocabulary (id {self._token_ids[name]}).")
            self.observation_names.append(name)
            self.medians.append(float(median))
            self.scales.append(float(scale))
            self.observation_units.append(None if unit is None else str(unit))
            self._token_ids[name] = len(self.observation_names)
            new_ids.append(self._token_ids[name])
        return new_ids

    # ------------------------------------------------------------------ standardisation
    def fit(self, data: Any, observation_names: Sequence[str] | None = None) -> "AstroFeatureExtractor":
        """Set each observation's median and MAD-std (physical units) from the finite values in `data`."""
        names, table, _ = self.read_table(data, observation_names=observation_names, check_range=False)
        unfitted = []
        for name, values in zip(names, table.T):
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

    # ------------------------------------------------------------------ reading (the one validation layer)
    def _is_known_column(self, column: str, ignore_columns: Sequence[str], columns: Sequence[str]) -> bool:
        """Whether `column` is consumed or deliberately skipped: an observation, the error of one, or metadata."""
        if column in self._token_ids or column in ignore_columns or column in NON_OBSERVATION_COLUMNS:
            return True
        if column.startswith(NON_OBSERVATION_PREFIXES):
            return True
        return any(
            column.endswith(suffix) and column[: -len(suffix)] in self._token_ids and column[: -len(suffix)] in columns
            for suffix in (ERROR_SUFFIX, *ERROR_SUFFIX_ALIASES)
        )

    def _select_names(
        self, columns: Sequence[str], observation_names: Sequence[str] | None, ignore_columns: Sequence[str] = ()
    ) -> list[str]:
        if observation_names is not None:
            for name in observation_names:
                self.token_id(name)
                if name not in columns:
                    raise KeyError(f"Observation {name!r} was requested but the data has no such column.")
            return list(observation_names)
        names = [name for name in self.observation_names if name in columns]
        lower = {name.lower(): name for name in self.observation_names}
        unknown = []
        for column in columns:
            if self._is_known_column(column, ignore_columns, columns):
                continue
            base, suffix = column, ""
            for candidate in (ERROR_SUFFIX, *ERROR_SUFFIX_ALIASES):
                if column.lower().endswith(candidate):
                    base, suffix = column[: -len(candidate)], column[-len(candidate) :]
                    break
            if base in self._token_ids:  # an error column without its observation: nothing to use it for
                unknown.append(column)
                continue
            if base.lower() in lower:  # Teff, LOGG, TEFF_ERR: meant as an observation, in the wrong case
                meant = lower[base.lower()] + suffix.lower()
                raise ObservationNameError(
                    f"Column {column!r} is not an observation this model knows (names are case-sensitive). Did you "
                    f"mean {meant!r}? Rename the column."
                )
            if difflib.get_close_matches(base, self.observation_names, n=1, cutoff=0.85):
                hint = suggest_names(base, self.observation_names)
                raise ObservationNameError(f"Column {column!r} is not an observation this model knows.{hint}")
            unknown.append(column)
        if not names:
            raise ValueError(
                f"None of the columns {list(columns)[:10]} is an observation this model knows "
                f"({', '.join(self.observation_names[:3])}, ..., {self.observation_names[-1]}): the data has no "
                "column named after an observation of the vocabulary; pass observation columns, in physical units."
            )
        if unknown:
            warnings.warn(
                f"{len(unknown)} column(s) of the input are not observations of this model and are not used: "
                f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''} (pass `observation_names=` to choose the "
                "inputs explicitly).",
                UnknownColumnsWarning,
                stacklevel=4,
            )
        return names

    def read_table(
        self,
        data: Any,
        errors: Mapping[str, Any] | None = None,
        observation_names: Sequence[str] | None = None,
        invalid: str = "raise",
        check_range: bool = True,
        ignore_columns: Sequence[str] = (),
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        r"""
        Read and validate stars: the one place where input tables are checked (the tokenizer, the collator and
        the predictor read through it).

        Args:
            data: see [`__call__`]; read with [`StarTable`].
            errors: 1-sigma errors per observation name, overriding the error columns.
            observation_names: read exactly these columns.
            invalid: what to do with values far outside the tokenizer's range (more than `MAX_STANDARDISED_VALUE`
                scales from the median: wrong units or sentinels) and with errors that are negative, infinite or
                that large: `"raise"` (default) raises a `ValueError` naming the observation, the row and the
                value; `"mask"` treats such values as missing (negative errors as unknown) with one
                `InvalidValueWarning`.
            check_range: check values against the standardisation (off while fitting it).
            ignore_columns: non-observation columns not to report (e.g. `keep_columns` of the predictor).

        Returns:
            `(names, values, errors)`: the observation names read, and float64 arrays `(num_stars, len(names))` of
            values and 1-sigma errors in the tokenizer's physical units, NaN where missing/unknown.
        """
        if invalid not in INVALID_POLICIES:
            raise ValueError(f"`invalid` must be one of {INVALID_POLICIES}, got {invalid!r}.")
        table = StarTable(data)
        names = self._select_names(table.columns, observation_names, ignore_columns)
        units = [self.observation_units[self._token_ids[name] - 1] for name in names]
        values = np.empty((table.num_rows, len(names)))
        error_values = np.full((table.num_rows, len(names)), np.nan)
        error_names: list[str | None] = [None] * len(names)
        for index, (name, unit) in enumerate(zip(names, units)):
            values[:, index] = table.numeric(name, unit)
            error_names[index] = table.error_column(name)
            if error_names[index] is not None:
                error_values[:, index] = table.numeric(error_names[index], unit)
        if errors is not None:
            error_table = StarTable(errors)
            if error_table.num_rows != table.num_rows:
                raise ValueError(f"`errors` has {error_table.num_rows} rows but the data has {table.num_rows}.")
            for key in error_table.columns:
                if key not in self._token_ids:
                    base = next((key[: -len(s)] for s in (ERROR_SUFFIX, *ERROR_SUFFIX_ALIASES) if key.endswith(s)), "")
                    if base in self._token_ids:
                        raise ObservationNameError(
                            f"`errors` key {key!r}: the keys of `errors` are observation names; use {base!r}."
                        )
                    self.token_id(key)  # raises with suggestions
                if key not in names:
                    raise ValueError(
                        f"`errors` gives errors of {key!r}, which is not among the observations read from the data "
                        f"({names[:10]}{' ...' if len(names) > 10 else ''}): its values are missing."
                    )
                index = names.index(key)
                error_names[index] = f"errors[{key!r}]"
                error_values[:, index] = error_table.numeric(key, units[index])
        values[np.isinf(values)] = np.nan  # documented: inf is missing
        if check_range:
            self._check_values(names, values, error_values, error_names, invalid, table.row_offset)
        return names, values, error_values

    def _check_values(
        self,
        names: list[str],
        values: np.ndarray,
        errors: np.ndarray,
        error_names: list[str | None],
        invalid: str,
        row_offset: int,
    ) -> None:
        """Flag values far outside the standardisation, and errors that are negative, infinite or too large."""
        token_ids = np.array([self._token_ids[name] for name in names], dtype=np.int64)
        median, scale = self._lookup(self.medians, token_ids), self._lookup(self.scales, token_ids)
        present = np.isfinite(values)
        with np.errstate(over="ignore", invalid="ignore"):
            far = present & (np.abs(values - median) > MAX_STANDARDISED_VALUE * scale)
            negative = present & (errors < 0)
            huge = present & (np.isinf(errors) | (errors > MAX_STANDARDISED_VALUE * scale))
        problems = [
            (far, "value(s) far outside the tokenizer's range", "check the units and sentinel values (e.g. 99.999 "
             "or -9999 for missing) and set missing values to NaN, or pass invalid='mask' to treat them as missing",
             "treated as missing"),
            (negative, "negative 1-sigma error(s)", "errors must be >= 0: set unknown errors to NaN, or pass "
             "invalid='mask' to treat them as unknown", "errors treated as unknown"),
            (huge, "infinite or huge 1-sigma error(s)", "an error that large carries no information: set the value "
             "to NaN, or pass invalid='mask' to treat such values as missing", "values treated as missing"),
        ]  # fmt: skip
        reports = []
        for mask, what, advice, masked in problems:
            for index in np.flatnonzero(mask.any(axis=0)):
                row = int(np.flatnonzero(mask[:, index])[0])
                if mask is far:
                    label = f"Observation {names[index]!r}"
                    shown = values[row, index]
                else:
                    label = f"{error_names[index] or names[index]!r} (the 1-sigma error of {names[index]!r})"
                    shown = errors[row, index]
                where = f"first at row {row_offset + row}: {shown:g}"
                if mask is far:
                    distance = abs(shown - median[index]) / scale[index]
                    where += f", {distance:.3g} scales from its median {median[index]:g}"
                if mask is not negative:
                    where += f"; at most {MAX_STANDARDISED_VALUE:g} scales ({MAX_STANDARDISED_VALUE * scale[index]:g})"
                detail = f"{label}: {int(mask[:, index].sum())} {what} ({where})"
                if invalid == "raise":
                    raise ValueError(f"{detail}: {advice}.")
                reports.append(f"{detail}: {masked}")
        if reports:
            values[far | huge] = np.nan
            errors[negative] = np.nan
            warnings.warn("invalid='mask': " + "; ".join(reports) + ".", InvalidValueWarning, stacklevel=4)

    def __call__(
        self,
        data: Any,
        errors: Mapping[str, Any] | None = None,
        observation_names: Sequence[str] | None = None,
        padding: str = "longest",
        truncation: bool = False,
        return_tensors: str | None = None,
        invalid: str = "raise",
        ignore_columns: Sequence[str] = (),
        **kwargs,
    ) -> BatchFeature:
        r"""
        Encode stars into model inputs.

        Args:
            data: observations in physical units, one column per observation name: a dict of arrays (or of
                scalars: one star), a pandas DataFrame or Series (one star), an astropy Table/QTable (columns with
                units are converted to the tokenizer's `observation_units`), a list of row dicts or a `datasets`
                batch. NaN, inf, None, masked values and empty/'null' strings are missing; text that is not a
                number is an error naming the column and row. 1-sigma errors are read from `<name>_err` (or
                `<name>_error`) columns. Columns that are not observations are reported in one
                `UnknownColumnsWarning` (`source_id` and `true_*` excepted); a column that looks like a misspelt
                or wrongly-cased observation name (`Teff`) is an error.
            errors: 1-sigma errors per observation name, overriding the error columns; a key that is not an
                observation of the data is an error.
            observation_names: use exactly these columns (each must be a known name).
            padding: `"longest"` pads to the star with most observations, `"max_length"` to `context_length`.
            truncation: if `False` (default) a star with more observations than `context_length` is an error; if
                `True` only its first `context_length` observations in vocabulary order are kept.
            return_tensors: `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.
            invalid: `"raise"` (default) or `"mask"`: values more than `MAX_STANDARDISED_VALUE` scales from their
                median and negative, infinite or huge errors (see [`read_table`]).
            ignore_columns: non-observation columns not to report.

        Returns:
            `BatchFeature` with `input_ids` (int64), `input_values` (float32, standardised), `input_errors`
            (float32, standardised 1-sigma; 0 where unknown) and `attention_mask` (int64, 1 = observation).
        """
        names, values, error_values = self.read_table(
            data, errors, observation_names, invalid=invalid, ignore_columns=ignore_columns
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
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "AstroFeatureExtractor":
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
        output.pop("_token_ids", None)  # derived from `observation_names`, rebuilt by `__init__`
        return output


_DEPRECATED_NAMES = {"AstroTokenizer": "AstroFeatureExtractor"}


def __getattr__(name: str) -> Any:
    """`AstroTokenizer`, the old name of [`AstroFeatureExtractor`], with a `FutureWarning` (checkpoints saved
    before the rename name it in `preprocessor_config.json` and `auto_map`, and load through it)."""
    if name in _DEPRECATED_NAMES:
        warnings.warn(
            f"`{name}` was renamed `{_DEPRECATED_NAMES[name]}` (it is a transformers feature extractor, not a text "
            f"tokenizer); import `{_DEPRECATED_NAMES[name]}` instead. The old name will be removed in a future "
            "version.",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[_DEPRECATED_NAMES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AstroFeatureExtractor",
    "ERROR_SUFFIX",
    "ERROR_SUFFIX_ALIASES",
    "InvalidValueWarning",
    "MAX_STANDARDISED_VALUE",
    "ObservationNameError",
    "StarTable",
    "UnknownColumnsWarning",
    "suggest_names",
]
