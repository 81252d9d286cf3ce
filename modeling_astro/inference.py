"""Fast batched inference with an Astro model: predictions in physical units, embeddings and streaming.

[`AstroPredictor`] is the one inference path that evaluation, the science tasks and the catalogue command use.
What makes it fast (see `benchmarks/`): every requested observation is decoded in one pass, so the
keys/values of the encoder states are projected once per star and decoder block for all requests; stars are
sorted by their number of observations inside a chunk and every batch is padded only to its longest star; the
data is tokenised and moved to the device once per chunk, results come back once per chunk; everything runs
under `torch.inference_mode`, optionally in bf16 (`dtype=torch.bfloat16`) and with `torch.compile`; on the CPU,
attention runs a kernel for small heads (`small_head_attention`) and batches are cache-sized (128 stars).
"""

import copy
import itertools
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .fast_path import choose_dtype
from .feature_extraction_astro import AstroFeatureExtractor, StarTable
from .modeling_astro import pool_states
from .observations import EVALUATION_INPUTS, LABELS, SIGMA_SUFFIX, XP_COEFFICIENTS_PER_BAND
from .small_head_attention import ATTENTION_IMPLEMENTATION, load_kernel

#: Stars tokenised (and moved to the device) at once, in units of the batch size: larger chunks pad less.
CHUNK_BATCHES = 16
#: Inputs with more stars than this many batches show a progress bar when `progress=None`.
PROGRESS_MIN_BATCHES = 20
#: Most decoded (star, request) pairs per forward pass: bounds the decoder's activations (width up to 3096 in
#: the paper model) when many observations are requested, e.g. the 110 XP coefficients.
MAX_REQUEST_TOKENS = 32768
#: Default stars per forward pass: on a CPU, 128 keeps a batch's activations in cache (the paper model's compiled
#: bf16 XP -> labels forward at 2 threads: 4.6k stars/s at 64, 5.0k at 128, 4.6k at 256, slower still at 512 and
#: 1024); GPUs want large batches.
DEFAULT_BATCH_SIZE = {"cpu": 128, "cuda": 1024}
#: Synthetic stars per timed pass of the `dtype="auto"` probe (a few seconds in all for the paper model on 2 cores).
PROBE_STARS = 64
#: The probe times at least this long per dtype (more passes for small models) and at most this many passes.
PROBE_MIN_SECONDS = 0.5
PROBE_MAX_REPEATS = 200
XP_BANDS = ("bp", "rp")
"""Keys of `correlations=` in [`AstroPredictor.predict`]: the XP bands, whose coefficients are `bp0` ... `bp54`."""
XP_CORRELATIONS_PER_BAND = XP_COEFFICIENTS_PER_BAND * (XP_COEFFICIENTS_PER_BAND - 1) // 2
"""1485: the Gaia archive's `<band>_coefficient_correlations`, the strict lower triangle packed row by row."""


def xp_correlation_matrix(correlations: Any) -> np.ndarray:
    """One band's XP coefficient correlations -> full `(num_stars, 55, 55)` matrices (float64, unit diagonal).

    Accepts the archive's packed form `(num_stars, 1485)` (the strict lower triangle row by row: (1,0), (2,0),
    (2,1), (3,0), ..., as `<band>_coefficient_correlations` in Gaia DR3 and GaiaXPy) or full matrices
    `(num_stars, 55, 55)`. Rows that are all NaN (a star without published correlations) come back as NaN.
    The correlations of coefficients divided by f_G (the model's inputs) are those of the archive's coefficients.
    """
    n = XP_COEFFICIENTS_PER_BAND
    array = np.asarray(correlations, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == XP_CORRELATIONS_PER_BAND:
        rows, cols = np.tril_indices(n, k=-1)
        matrix = np.zeros((len(array), n, n))
        matrix[:, rows, cols] = array
        matrix[:, cols, rows] = array
        matrix[:, np.arange(n), np.arange(n)] = np.where(np.isnan(array).all(axis=1), np.nan, 1.0)[:, None]
        return matrix
    if array.ndim == 3 and array.shape[1:] == (n, n):
        return array
    raise ValueError(
        f"XP correlations must be packed `(num_stars, {XP_CORRELATIONS_PER_BAND})` (the Gaia archive's "
        f"`*_coefficient_correlations`) or full `(num_stars, {n}, {n})`; got shape {array.shape}."
    )


@dataclass
class AstroAttentions:
    r"""
    Attention weights returned by [`AstroPredictor.predict`] with `output_attentions=True`.

    Every star is padded to the longest star of the whole input, `L` observations. Key positions `0 .. L-1`
    are the star's input observations in the order of `input_ids` (padding keys have weight 0); when the model
    has learned bias keys (`config.attention_bias_kv`) the last key position `L` is that bias key. Rows of
    stars without any usable observation are NaN.

    Args:
        input_ids (`np.ndarray` of shape `(num_stars, L)`):
            Token id of the observation at each key position (0 = padding); names are
            `tokenizer.observation_names[id - 1]`.
        encoder (`list[np.ndarray]`):
            Per encoder block, weights `(num_stars, num_heads, L, num_keys)`; query = input observation.
        cross (`list[np.ndarray]`):
            Per decoder block, weights `(num_stars, num_heads, num_requests, num_keys)`; query = request.
    """

    input_ids: np.ndarray
    encoder: list[np.ndarray]
    cross: list[np.ndarray]


def _own_feature_extractor(tokenizer: Any) -> AstroFeatureExtractor:
    """
    `tokenizer` as this module's `AstroFeatureExtractor`. One loaded from a checkpoint's shipped code (a
    `transformers_modules` copy: e.g. a checkpoint saved under the old name `AstroTokenizer`, whose code
    `AutoFeatureExtractor(trust_remote_code=True)` then runs) is another class that cannot read this module's
    star tables: it is rebuilt here from its saved settings (`to_dict`), so old checkpoints predict like new ones.
    """
    if isinstance(tokenizer, AstroFeatureExtractor):
        return tokenizer
    if type(tokenizer).__name__ in ("AstroFeatureExtractor", "AstroTokenizer") and hasattr(tokenizer, "to_dict"):
        return AstroFeatureExtractor.from_dict(tokenizer.to_dict())
    raise TypeError(
        f"AstroPredictor needs an AstroFeatureExtractor (the checkpoint's preprocessor), got "
        f"{type(tokenizer).__name__}."
    )


class AstroPredictor:
    r"""
    Batched inference with an [`AstroForObservationPrediction`] and its [`AstroFeatureExtractor`].

    Args:
        model: the model (put in eval mode and moved to `device`).
        tokenizer: the tokenizer saved with the model.
        device: where to run; defaults to CUDA when available, else CPU.
        batch_size: stars per forward pass (with `n_samples > 0`, stars x samples per pass); default 128 on a CPU,
            1024 on other devices.
        dtype: `torch.bfloat16` (or `torch.float16`) runs a copy of the model cast to that dtype, made here:
            faster on CPUs with AVX512-BF16 and on GPUs, and faster than autocast on the CPU (no per-call
            casts of weights and activations); predictions are returned in float32. `None` or `torch.float32`
            runs the model itself in float32. `"auto"`: the faster of the two on this machine
            (`modeling_astro.fast_path`: measured once per CPU, torch, thread count and model shape and cached;
            bf16 on CUDA where supported); `predictor.fast_path` says what was chosen and why.
        compile: wrap the forward pass in `torch.compile(dynamic=True)` with inductor's freezing (the weights
            become constants of the compiled graph: linear layers fused with their activations; measured 1.3x (bf16)
            to 2x (fp32) faster on a CPU). The first batches compile (tens of seconds); build a new predictor
            after changing the model's weights.
        attn_implementation: attention backend of the predictor's copy of the network; default
            `"astro_cpu_small_heads"` on the CPU (a C++ kernel for the model's small heads, built on first use
            with the system compiler; 2-4x faster than SDPA per call) when it builds, else the model's own. The
            model itself is not changed.

    Example:

    ```python
    >>> predictor = AstroPredictor.from_pretrained("path/to/checkpoint", dtype=torch.bfloat16)
    >>> table = predictor.predict(stars, request=["teff", "logg", "m_h"])  # columns teff, teff_sigma, ...
    >>> vectors = predictor.embed(stars)  # (num_stars, hidden_size)
    ```
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: AstroFeatureExtractor,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        compile: bool = False,
        attn_implementation: str | None = None,
    ):
        if not hasattr(model, "predict_from_encoding"):
            raise TypeError(
                f"AstroPredictor needs an AstroForObservationPrediction (with a prediction head), got "
                f"{type(model).__name__}; load it with AutoModelForPreTraining."
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
        if not (isinstance(dtype, str) and dtype == "auto") and dtype not in (
            None,
            torch.float32,
            torch.bfloat16,
            torch.float16,
        ):
            raise ValueError(
                f"`dtype` must be None, torch.float32, torch.bfloat16, torch.float16 or 'auto', got {dtype!r}."
            )
        tokenizer = _own_feature_extractor(tokenizer)
        tokenizer.check_vocabulary(model.config.observation_names)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE.get(self.device.type, DEFAULT_BATCH_SIZE["cuda"]))
        if isinstance(dtype, str):  # "auto": measured (or cached) on this machine
            self.dtype, self.fast_path = choose_dtype(
                self.device, self._model_shape(), lambda candidate: self._probe(candidate, attn_implementation)
            )
        else:
            self.dtype = dtype or torch.float32
            self.fast_path = {"dtype": str(self.dtype).removeprefix("torch."), "reason": "given"}
        self._network = self._network_copy(attn_implementation)
        self._compiled = torch.compile(self._forward_batch, dynamic=True) if compile else None

    def _model_shape(self) -> dict[str, Any]:
        """What sets the network's cost: part of the key of a cached `dtype="auto"` choice."""
        config = self.model.config
        return {
            "class": type(self.model).__name__,
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "hidden_size": config.hidden_size,
            "batch_size": self.batch_size,
            "device": self.device.type,
        }

    def _probe(self, dtype: torch.dtype, attn_implementation: str | None, repeats: int = 2) -> float:
        """
        Median seconds of this predictor's XP -> labels pass over one batch of synthetic stars in `dtype` (one
        untimed warm-up first, then at least `repeats` timed passes and as many more as fit in
        `PROBE_MIN_SECONDS`, up to `PROBE_MAX_REPEATS`, so that a small model's timing is not one noisy pass):
        the measurement behind `dtype="auto"`.
        """
        names = self.model.config.observation_names
        inputs = [name for name in EVALUATION_INPUTS if name in names] or list(names)
        inputs = inputs[: self.model.config.context_length]
        request = [name for name in LABELS if name in names] or [names[-1]]
        num_stars = min(self.batch_size, PROBE_STARS)
        generator = np.random.default_rng(0)
        stars = {name: generator.normal(0.0, 0.1, num_stars).astype(np.float32) for name in inputs}
        self.dtype, self._compiled = dtype, None
        self._network = self._network_copy(attn_implementation)
        self.predict(stars, request, progress=False)  # warm-up
        seconds = []
        while len(seconds) < repeats or (sum(seconds) < PROBE_MIN_SECONDS and len(seconds) < PROBE_MAX_REPEATS):
            start = time.perf_counter()
            self.predict(stars, request, progress=False)
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    def _network_copy(self, attn_implementation: str | None) -> torch.nn.Module:
        """
        The network the predictor runs: a copy of the model with its own config (attention backend) that shares
        the model's weights in float32 (so that it follows later changes of the weights), or holds them cast to
        `self.dtype`.
        """
        shared = {}
        if self.dtype == torch.float32:
            shared = {id(tensor): tensor for tensor in itertools.chain(self.model.parameters(), self.model.buffers())}
        network = copy.deepcopy(self.model, memo=shared).to(self.dtype)
        if attn_implementation is None and self.device.type == "cpu" and load_kernel() is not None:
            attn_implementation = ATTENTION_IMPLEMENTATION
        if attn_implementation is not None:
            network.set_attn_implementation(attn_implementation)
        return network

    def _forward(self, *args, **kwargs) -> tuple:
        """`_forward_batch`, compiled with inductor's freezing (weights as constants) when `compile=True`."""
        if self._compiled is None:
            return self._forward_batch(*args, **kwargs)
        with torch._inductor.config.patch(freezing=True):
            return self._compiled(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = True, **kwargs) -> "AstroPredictor":
        """Load the model (`AutoModelForPreTraining`) and tokenizer (`AutoFeatureExtractor`) from `path`."""
        from transformers import AutoFeatureExtractor, AutoModelForPreTraining

        model = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------ model passes
    def _forward_batch(
        self,
        input_ids: torch.Tensor,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor,
        request_ids: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, tuple, tuple]:
        """Encoder once, then all requests in one decoder pass (keys/values projected once per block)."""
        encoder_states, encoder_attentions = self._network.encode(
            input_ids, input_values, attention_mask, output_attentions
        )
        if request_ids is None:
            return None, None, encoder_states.float(), encoder_attentions, ()
        mean, logvar, cross_attentions = self._network.predict_from_encoding(
            request_ids.expand(input_ids.shape[0], -1), encoder_states, attention_mask, output_attentions
        )
        return mean.float(), logvar.float(), encoder_states, encoder_attentions, cross_attentions

    def _batches(
        self,
        rows: StarTable,
        errors: StarTable | None,
        stars_per_batch: int,
        progress: bool | None,
        invalid: str = "raise",
        ignore_columns: Sequence[str] = (),
        empty: list[np.ndarray] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, dict[str, torch.Tensor]]]:
        """
        Yield `(chunk_start, star_indices_in_chunk, tensors)` per batch: stars tokenised a chunk at a time,
        sorted by number of observations and cut to the longest star of each batch. Stars without observations
        are skipped (their rows are appended to `empty`).
        """
        chunk_rows = CHUNK_BATCHES * stars_per_batch
        show = rows.num_rows > PROGRESS_MIN_BATCHES * stars_per_batch if progress is None else progress
        with tqdm(total=rows.num_rows, unit="star", disable=not show, smoothing=0.1) as bar:
            for start in range(0, rows.num_rows, chunk_rows):
                stop = min(start + chunk_rows, rows.num_rows)
                features = self.tokenizer(
                    rows.slice(start, stop),
                    errors=None if errors is None else errors.slice(start, stop),
                    truncation=True,
                    return_tensors="pt",
                    invalid=invalid,
                    ignore_columns=ignore_columns,
                )
                if empty is not None:
                    lengths = features["attention_mask"].sum(dim=1).numpy()
                    empty.append(start + np.flatnonzero(lengths == 0))
                used = 0
                for stars, batch in self._sorted_batches(features, stars_per_batch):
                    yield start, stars, batch
                    bar.update(len(stars))
                    used += len(stars)
                bar.update(stop - start - used)

    def _sorted_batches(
        self, features: Mapping[str, torch.Tensor], stars_per_batch: int
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """
        Yield `(star_indices, tensors)` per batch of tokenised stars: sorted by number of observations, cut to
        the longest star of each batch, on the device. Stars without observations are skipped.
        """
        lengths = features["attention_mask"].sum(dim=1).cpu().numpy()
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]
        on_device = {key: value.to(self.device, non_blocking=True) for key, value in features.items()}
        for first in range(0, len(order), stars_per_batch):
            stars = order[first : first + stars_per_batch]
            length = int(lengths[stars[-1]])
            index = torch.from_numpy(stars).to(self.device)
            yield stars, {key: value[index, :length] for key, value in on_device.items()}

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def predict(
        self,
        data: Any,
        request: Sequence[str],
        errors: Mapping[str, Any] | None = None,
        n_samples: int = 0,
        seed: int = 0,
        correlations: Mapping[str, Any] | None = None,
        output_attentions: bool = False,
        progress: bool | None = None,
        keep_columns: Sequence[str] = (),
        invalid: str = "raise",
    ) -> pd.DataFrame | tuple[pd.DataFrame, AstroAttentions]:
        r"""
        Predict the requested observations of every star, in physical units.

        Args:
            data: the stars' observations in physical units, one column per observation name (1-sigma errors
                in `<name>_err` columns): a dict of arrays, a pandas DataFrame, an astropy Table, a `datasets`
                Dataset or batch. Missing values (NaN) are simply not given to the model. A star with more
                observations than the context length keeps the first ones in vocabulary order: pass only the
                columns meant as inputs.
            request: observation names to predict, e.g. `["teff", "logg", "m_h"]`; an unknown name raises
                `ObservationNameError` with suggestions.
            errors: 1-sigma errors per observation name (same rows as `data`), overriding `<name>_err`.
            n_samples: if > 0, propagate the input errors by Monte Carlo: each star is predicted `n_samples`
                times with inputs drawn from N(value, error); the value is the mean of the sampled predictions
                and the sigma `sqrt(mean model variance + variance of the sampled means)`.
            seed: seed of the Monte-Carlo draws.
            correlations: with `n_samples > 0`, the correlations between each star's XP coefficients,
                `{"bp": array, "rp": array}` (either band may be left out), each `(num_stars, 1485)` as the Gaia
                archive packs `bp_coefficient_correlations` (e.g. `dataset_builder.readers.read_xp_correlations`)
                or `(num_stars, 55, 55)`. The coefficients given as inputs are then drawn from the full
                covariance `diag(err) C diag(err)` of their band instead of independently; a star whose row is
                NaN keeps independent draws. The table's `attrs["error_propagation"]` says which stars got what.
            output_attentions: also return the attention weights, as `(table, AstroAttentions)` (eager
                attention, slower and memory-hungry: use on small inputs).
            progress: show a tqdm bar (`None`: only for inputs of more than 20 batches).
            keep_columns: input columns copied unchanged (e.g. `source_id`) to the front of the table.
            invalid: `"raise"` (default): values far outside the tokenizer's range (wrong units, sentinels) and
                negative, infinite or huge errors are a `ValueError` naming the observation and row; `"mask"`
                treats them as missing, with a warning (see `AstroFeatureExtractor.read_table`).

        Returns:
            `pandas.DataFrame` with one row per input star, in input order, and columns `<name>` and
            `<name>_sigma` for every requested name. Stars without any usable observation get NaN (with one
            warning).
        """
        rows = StarTable(data)
        if rows.num_rows == 0:
            raise ValueError("The input holds no star (0 rows): pass at least one star to predict.")
        request = list(request)
        request_ids = self.tokenizer.encode_requests(request).to(self.device)
        if n_samples < 0:
            raise ValueError(f"`n_samples` must be >= 0, got {n_samples}.")
        if n_samples and output_attentions:
            raise ValueError("`output_attentions=True` is not supported with `n_samples > 0`; pick one.")
        missing_kept = [name for name in keep_columns if name not in rows.columns]
        if missing_kept:
            raise KeyError(
                f"Column(s) {missing_kept} (in `keep_columns`) are not in the input; it has {rows.columns[:10]}."
            )
        kept = {name: rows.raw(name) for name in keep_columns}
        error_rows = None if errors is None else StarTable(errors)
        if error_rows is not None and error_rows.num_rows != rows.num_rows:
            raise ValueError(f"`errors` has {error_rows.num_rows} rows but `data` has {rows.num_rows}.")
        band_correlations = self._read_correlations(correlations, rows.num_rows, n_samples)

        num_requests = len(request)
        samples = max(n_samples, 1)
        stars_per_batch = max(1, min(self.batch_size, MAX_REQUEST_TOKENS // num_requests) // samples)
        generator = torch.Generator(self.device).manual_seed(seed) if n_samples else None
        mean = np.full((rows.num_rows, num_requests), np.nan, dtype=np.float32)
        logvar = np.full((rows.num_rows, num_requests), np.nan, dtype=np.float32)
        attention_batches = []
        chunk_start, chunk_index, chunk_mean, chunk_logvar = None, [], [], []

        def flush() -> None:
            if chunk_index:
                index = chunk_start + np.concatenate(chunk_index)
                mean[index] = torch.cat(chunk_mean).cpu().numpy()
                logvar[index] = torch.cat(chunk_logvar).cpu().numpy()
            chunk_index.clear(), chunk_mean.clear(), chunk_logvar.clear()

        empty: list[np.ndarray] = []
        batches = self._batches(rows, error_rows, stars_per_batch, progress, invalid, keep_columns, empty)
        for start, stars, batch in batches:
            if start != chunk_start:
                flush()
                chunk_start = start
            if n_samples:
                correlation = self._token_correlations(batch["input_ids"], band_correlations, start + stars)
                batch_mean, batch_logvar = self._sampled_batch(batch, request_ids, n_samples, generator, correlation)
            else:
                batch_mean, batch_logvar, _, encoder_att, cross_att = self._forward(
                    batch["input_ids"],
                    batch["input_values"],
                    batch["attention_mask"],
                    request_ids,
                    output_attentions,
                )
                if output_attentions:
                    attention_batches.append((start + stars, batch["input_ids"], encoder_att, cross_att))
            chunk_index.append(stars)
            chunk_mean.append(batch_mean)
            chunk_logvar.append(batch_logvar)
        flush()

        self._warn_empty_stars(mean, empty)
        value, sigma = self.tokenizer.inverse_transform(mean, logvar, request_ids.cpu().numpy()[None, :])
        columns = dict(kept)
        for i, name in enumerate(request):
            columns[name] = value[:, i].astype(np.float32)
            columns[name + SIGMA_SUFFIX] = sigma[:, i].astype(np.float32)
        table = pd.DataFrame(columns)
        if n_samples:
            table.attrs["error_propagation"] = {
                "n_samples": n_samples,
                "full_covariance_stars": {
                    band: int((~np.isnan(array.reshape(len(array), -1)).all(axis=1)).sum())
                    for band, array in band_correlations.items()
                },
                "otherwise": "independent draws from each input's 1-sigma error (diagonal covariance)",
            }
        if output_attentions:
            return table, self._gather_attentions(attention_batches, rows.num_rows, num_requests)
        return table

    def _read_correlations(self, correlations: Mapping[str, Any] | None, num_rows: int, n_samples: int) -> dict:
        """`{band: array}` of `predict`'s `correlations=`, checked (unpacked a batch at a time, when used)."""
        if not correlations:
            return {}
        if not n_samples:
            raise ValueError("`correlations` are used to draw the inputs' errors: pass `n_samples > 0` with them.")
        unknown = sorted(set(correlations) - set(XP_BANDS))
        if unknown:
            raise KeyError(f"`correlations` keys must be XP bands {list(XP_BANDS)}; got {unknown}.")
        arrays = {}
        for band, value in correlations.items():
            array = np.asarray(value, dtype=np.float64)
            xp_correlation_matrix(array[:1])  # checks the shape
            if len(array) != num_rows:
                raise ValueError(f"`correlations[{band!r}]` has {len(array)} rows but `data` has {num_rows}.")
            if np.nanmax(np.abs(array), initial=0.0) > 1 + 1e-6:
                raise ValueError(
                    f"`correlations[{band!r}]` holds values outside [-1, 1]: pass correlations, not a covariance."
                )
            arrays[band] = array
        return arrays

    def _token_correlations(
        self, input_ids: torch.Tensor, band_correlations: Mapping[str, np.ndarray], rows: np.ndarray
    ) -> torch.Tensor | None:
        """The correlation matrix `(batch, length, length)` of a batch's input tokens: the band's correlations
        between XP coefficients of one band, 0 between other observations (and for stars without correlations)."""
        if not band_correlations:
            return None
        ids = input_ids.cpu()
        correlation = torch.eye(ids.shape[1]).repeat(len(ids), 1, 1)
        names = self.tokenizer.observation_names
        for band, array in band_correlations.items():
            coefficient = torch.full((len(names) + 1,), -1, dtype=torch.long)  # token id -> coefficient index
            for token, name in enumerate(names, start=1):
                if name.startswith(band) and name[len(band) :].isdigit():
                    coefficient[token] = int(name[len(band) :])
            position = coefficient[ids]  # (batch, length): coefficient index, -1 for other observations
            inside = position >= 0
            safe = position.clamp(min=0)
            star = torch.from_numpy(xp_correlation_matrix(array[rows]).astype(np.float32))
            gathered = star[torch.arange(len(ids))[:, None, None], safe[:, :, None], safe[:, None, :]]
            pair = inside[:, :, None] & inside[:, None, :] & torch.isfinite(gathered)
            correlation = torch.where(pair, gathered, correlation)
        return correlation.to(self.device)

    @torch.inference_mode()
    def predict_tokenized(self, features: Mapping[str, Any], request: Sequence[str]) -> pd.DataFrame:
        r"""
        Predict the requested observations from stars already tokenised by `self.tokenizer` (e.g. in other
        processes of a pipeline, so that this process only runs the model), in physical units.

        Args:
            features: the tokenizer's output for `num_stars` stars: `input_ids`, `input_values` and
                `attention_mask`, arrays or tensors of shape `(num_stars, length)` (any padding, any integer or
                bool dtype for the ids and the mask).
            request: observation names to predict.

        Returns:
            `pandas.DataFrame` with columns `<name>` and `<name>_sigma` per requested name, one row per star in
            input order (NaN for stars without observations), equal to [`predict`] on the untokenised stars.
        """
        missing = [key for key in ("input_ids", "input_values", "attention_mask") if key not in features]
        if missing:
            raise KeyError(f"`features` lacks {missing}: pass the output of the predictor's tokenizer.")
        tensors = {
            "input_ids": torch.as_tensor(np.asarray(features["input_ids"]), dtype=torch.long),
            "input_values": torch.as_tensor(np.asarray(features["input_values"]), dtype=torch.float32),
            "attention_mask": torch.as_tensor(np.asarray(features["attention_mask"]), dtype=torch.long),
        }
        shapes = {tuple(value.shape) for value in tensors.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"`features` arrays must share one shape (num_stars, length), got {sorted(shapes)}.")
        num_rows = tensors["input_ids"].shape[0]
        request = list(request)
        request_ids = self.tokenizer.encode_requests(request).to(self.device)
        stars_per_batch = max(1, min(self.batch_size, MAX_REQUEST_TOKENS // len(request)))
        mean = np.full((num_rows, len(request)), np.nan, dtype=np.float32)
        logvar = np.full((num_rows, len(request)), np.nan, dtype=np.float32)
        indices, means, logvars = [], [], []
        for stars, batch in self._sorted_batches(tensors, stars_per_batch):
            batch_mean, batch_logvar, *_ = self._forward(
                batch["input_ids"], batch["input_values"], batch["attention_mask"], request_ids
            )
            indices.append(stars), means.append(batch_mean), logvars.append(batch_logvar)
        if indices:
            index = np.concatenate(indices)
            mean[index] = torch.cat(means).cpu().numpy()
            logvar[index] = torch.cat(logvars).cpu().numpy()
        empty = np.flatnonzero(tensors["attention_mask"].sum(dim=1).numpy() == 0)
        self._warn_empty_stars(mean, [empty])
        value, sigma = self.tokenizer.inverse_transform(mean, logvar, request_ids.cpu().numpy()[None, :])
        columns = {}
        for i, name in enumerate(request):
            columns[name] = value[:, i].astype(np.float32)
            columns[name + SIGMA_SUFFIX] = sigma[:, i].astype(np.float32)
        return pd.DataFrame(columns)

    def _sampled_batch(
        self,
        batch: dict[str, torch.Tensor],
        request_ids: torch.Tensor,
        n_samples: int,
        generator: torch.Generator,
        correlation: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte-Carlo propagation of the input errors: mean and log total variance over `n_samples` draws.

        `correlation` `(batch, length, length)`: the inputs' correlations (independent draws when `None`)."""
        values, errors, mask = batch["input_values"], batch["input_errors"], batch["attention_mask"]
        noise = torch.randn((n_samples, *values.shape), generator=generator, device=self.device, dtype=values.dtype)
        if correlation is not None:
            factor, info = torch.linalg.cholesky_ex(correlation)
            if bool(info.any()):  # rounding of the published correlations: the nearest positive definite matrix
                eigenvalues, vectors = torch.linalg.eigh(correlation)
                factor = vectors * eigenvalues.clamp(min=1e-6).sqrt()[:, None, :]
            noise = torch.einsum("bij,sbj->sbi", factor.to(values.dtype), noise)
        sampled = (values + noise * errors * mask).flatten(0, 1)
        repeat = (n_samples, 1)
        mean, logvar, *_ = self._forward(batch["input_ids"].repeat(repeat), sampled, mask.repeat(repeat), request_ids)
        mean = mean.view(n_samples, *values.shape[:1], -1)
        variance = logvar.view_as(mean).exp().mean(dim=0)
        spread = mean.var(dim=0, correction=1) if n_samples > 1 else torch.zeros_like(variance)
        return mean.mean(dim=0), torch.log(variance + spread)

    @staticmethod
    def _warn_empty_stars(outputs: np.ndarray, empty: list[np.ndarray]) -> None:
        """One warning for stars without observations, another for stars whose outputs are not finite."""
        empty_rows = np.sort(np.concatenate(empty)) if empty else np.zeros(0, dtype=np.int64)
        if empty_rows.size:
            warnings.warn(
                f"{empty_rows.size} star(s) (first at row {empty_rows[0]}) have no usable observation (all missing "
                "or not in the vocabulary): their outputs are NaN.",
                stacklevel=4,  # _warn_empty_stars <- predict/embed <- inference_mode wrapper <- caller
            )
        broken = ~np.isfinite(outputs).all(axis=1)
        broken[empty_rows] = False
        if broken.any():
            rows = np.flatnonzero(broken)
            warnings.warn(
                f"The model returned non-finite outputs for {rows.size} star(s) with observations (first at row "
                f"{rows[0]}): the model's weights or these stars' inputs are broken; check them.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _gather_attentions(self, batches: list, num_stars: int, num_requests: int) -> AstroAttentions:
        """Scatter per-batch attention weights into arrays padded to the longest star (bias key kept last)."""
        longest = max((ids.shape[1] for _, ids, _, _ in batches), default=0)
        extra_keys = int(self.model.config.attention_bias_kv)
        input_ids = np.zeros((num_stars, longest), dtype=np.int64)
        encoder, cross = [], []
        for layer in range(len(batches[0][2]) if batches else 0):
            heads = batches[0][2][layer].shape[1]
            encoder.append(np.full((num_stars, heads, longest, longest + extra_keys), np.nan, dtype=np.float32))
        for layer in range(len(batches[0][3]) if batches else 0):
            heads = batches[0][3][layer].shape[1]
            cross.append(np.full((num_stars, heads, num_requests, longest + extra_keys), np.nan, dtype=np.float32))
        for stars, ids, encoder_att, cross_att in batches:
            length = ids.shape[1]
            input_ids[stars, :length] = ids.cpu().numpy()
            for target, weights in zip(encoder, encoder_att):
                weights = weights.float().cpu().numpy()
                target[stars, :, length:, :] = 0.0
                target[stars, :, :length, :] = 0.0
                target[stars, :, :length, :length] = weights[..., :length]
                target[stars, :, :length, longest:] = weights[..., length:]
            for target, weights in zip(cross, cross_att):
                weights = weights.float().cpu().numpy()
                target[stars, :, :, :] = 0.0
                target[stars, :, :, :length] = weights[..., :length]
                target[stars, :, :, longest:] = weights[..., length:]
        return AstroAttentions(input_ids=input_ids, encoder=encoder, cross=cross)

    @torch.inference_mode()
    def embed(
        self,
        data: Any,
        pooling: str = "mean",
        errors: Mapping[str, Any] | None = None,
        progress: bool | None = None,
        invalid: str = "raise",
    ) -> np.ndarray:
        """
        Per-star embeddings `(num_stars, hidden_size)`: the encoder states pooled over each star's real
        observations (`pooling="mean"` or `"max"`), in input order. Stars without any usable observation get
        NaN rows. `invalid` as in [`predict`].
        """
        if pooling not in ("mean", "max"):
            raise ValueError(f"`pooling` must be 'mean' or 'max', got {pooling!r}.")
        rows = StarTable(data)
        if rows.num_rows == 0:
            raise ValueError("The input holds no star (0 rows): pass at least one star to embed.")
        vectors = np.full((rows.num_rows, self.model.config.hidden_size), np.nan, dtype=np.float32)
        error_rows = None if errors is None else StarTable(errors)
        empty: list[np.ndarray] = []
        for start, stars, batch in self._batches(rows, error_rows, self.batch_size, progress, invalid, (), empty):
            *_, states, _, _ = self._forward(batch["input_ids"], batch["input_values"], batch["attention_mask"], None)
            vectors[start + stars] = pool_states(states, batch["attention_mask"], pooling).cpu().numpy()
        self._warn_empty_stars(vectors, empty)
        return vectors

    def predict_stream(
        self,
        dataset: Any,
        request: Sequence[str],
        rows_per_chunk: int = 65536,
        n_samples: int = 0,
        seed: int = 0,
        keep_columns: Sequence[str] = (),
        progress: bool | None = None,
    ) -> Iterator[pd.DataFrame]:
        """
        Predict a `datasets.Dataset` or `IterableDataset` (e.g. `load_dataset(..., streaming=True)`) that need
        not fit in memory: yields one table per `rows_per_chunk` stars, as [`predict`] would return it
        (indexed by the stars' positions in the dataset, so `pd.concat` of the chunks equals `predict` on the
        whole dataset when `n_samples == 0`). Chunk `k` uses the Monte-Carlo seed `seed + k`.
        """
        total = len(dataset) if hasattr(dataset, "__len__") else None
        show = (total is None or total > rows_per_chunk) if progress is None else progress
        offset = 0
        with tqdm(total=total, unit="star", disable=not show, smoothing=0.1) as bar:
            for k, batch in enumerate(dataset.with_format("numpy").iter(batch_size=rows_per_chunk)):
                table = self.predict(
                    batch,
                    request,
                    n_samples=n_samples,
                    seed=seed + k,
                    progress=False,
                    keep_columns=keep_columns,
                )
                table.index = pd.RangeIndex(offset, offset + len(table))
                offset += len(table)
                bar.update(len(table))
                yield table


__all__ = ["AstroAttentions", "AstroPredictor"]
