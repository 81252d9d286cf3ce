"""Realism of simulated Gaia XP spectra: a matched two-sample classifier against real DR3 XP coefficients.

Simulated and real stars are paired 1:1 on the two variables a survey selection sets, colour
(``bp0 / rp0``) and signal-to-noise (``err(bp0) / bp0``), so that what is left to tell them apart is
the shape of the spectra and the error model. A gradient-boosting classifier (XGBoost) is then
cross-validated with pairs kept together in one fold (5 folds); the out-of-fold ROC AUC is 0.5 when
the simulation cannot be told from the real sample, 1.0 when it always can.

Feature sets (all ratios, so that brightness does not enter):

- ``low_order``: ``bp_i / bp0`` and ``rp_i / rp0`` for i = 1..10, plus ``bp0 / rp0``;
- ``first_five``: the same for i = 1..5 only (the issue's "coefficients 1-5");
- ``all``: all 54 ratios per band, every error over its band's ``c0`` (55 per band), ``bp0 / rp0``;
- ``matching``: the two matching variables only (a control: must score ~0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .schema import XP_LENGTH

BANDS = ("bp", "rp")
LOW_ORDER_MAX = 10
FEATURE_SETS: tuple[str, ...] = ("low_order", "first_five", "all", "matching")
MATCH_CALIPER = 0.1
"""Largest allowed distance of a pair in the standardised (log colour, log S/N) plane."""


@dataclass(frozen=True)
class XPSample:
    """Raw (not G-normalised) XP coefficients and errors of a set of stars: {band: (n, 55)}."""

    coefficients: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    n_relevant_bases: dict[str, np.ndarray]
    source_id: np.ndarray | None = None
    """Gaia source_id of each star where known."""

    def __len__(self) -> int:
        return len(self.coefficients["bp"])

    def take(self, rows: np.ndarray) -> XPSample:
        return XPSample(
            {b: v[rows] for b, v in self.coefficients.items()},
            {b: v[rows] for b, v in self.errors.items()},
            {b: v[rows] for b, v in self.n_relevant_bases.items()},
            None if self.source_id is None else self.source_id[rows],
        )

    def complete(self) -> XPSample:
        """The stars with both bands, positive c0 and finite values."""
        good = np.ones(len(self), dtype=bool)
        for band in BANDS:
            good &= np.isfinite(self.coefficients[band]).all(axis=1) & np.isfinite(self.errors[band]).all(axis=1)
            good &= self.coefficients[band][:, 0] > 0
        return self.take(np.flatnonzero(good))


def calibration_half(source_id: np.ndarray) -> np.ndarray:
    """True for the real stars the simulator is calibrated on (`xp_calibration`), False for the held-out half.

    A fixed rule on the Gaia source_id ((source_id // 7) is even: 1,111 of the 2,000 real stars), so that
    realism is always measured on stars the calibration has not seen.
    """
    return (np.asarray(source_id, dtype=np.int64) // 7) % 2 == 0


def read_flat_real_sample(path: str | Path) -> XPSample:
    """The flat ``bp_coeff_<i>`` / ``e_bp_coeff_<i>`` layout of ``real_xp_sample/xp_continuous_2000_sources.fits``."""
    from astropy.table import Table

    table = Table.read(path)
    coefficients, errors, relevant = {}, {}, {}
    for band in BANDS:
        coefficients[band] = np.stack(
            [np.asarray(table[f"{band}_coeff_{i}"], dtype=np.float64) for i in range(XP_LENGTH)], axis=1
        )
        errors[band] = np.stack(
            [np.asarray(table[f"e_{band}_coeff_{i}"], dtype=np.float64) for i in range(XP_LENGTH)], axis=1
        )
        relevant[band] = np.asarray(table[f"{band}_n_relevant_bases"], dtype=np.int16)
    return XPSample(coefficients, errors, relevant, np.asarray(table["source_id"], dtype=np.int64)).complete()


def read_xp_files(paths: Sequence[str | Path]) -> XPSample:
    """XP_CONTINUOUS files (any format the builder reads) as one `XPSample` of the complete stars."""
    from .readers import read_xp_continuous

    parts = [read_xp_continuous(path) for path in paths]
    cat = lambda name: np.concatenate([getattr(part, name) for part in parts])  # noqa: E731
    return XPSample(
        {band: cat(f"{band}_coefficients") for band in BANDS},
        {band: cat(f"{band}_coefficient_errors") for band in BANDS},
        {band: cat(f"{band}_n_relevant_bases") for band in BANDS},
        cat("source_id"),
    ).complete()


def matching_variables(sample: XPSample) -> np.ndarray:
    """(n, 2): log(bp0 / rp0) and log(err(bp0) / bp0)."""
    bp0, rp0 = sample.coefficients["bp"][:, 0], sample.coefficients["rp"][:, 0]
    return np.stack([np.log(bp0 / rp0), np.log(sample.errors["bp"][:, 0] / bp0)], axis=1)


def match_pairs(real: XPSample, simulated: XPSample, caliper: float = MATCH_CALIPER) -> tuple[np.ndarray, np.ndarray]:
    """1:1 optimal matching (Hungarian) of real to simulated stars on the matching variables.

    Variables are standardised by the real sample's spread; pairs further apart than ``caliper``
    are dropped. Returns (real rows, simulated rows) of equal length.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    x_real, x_sim = matching_variables(real), matching_variables(simulated)
    scale = x_real.std(axis=0)
    distance = cdist(x_real / scale, x_sim / scale)
    rows, cols = linear_sum_assignment(np.where(distance < caliper, distance, 1e3 + distance))
    close = distance[rows, cols] < caliper
    return rows[close], cols[close]


def feature_table(sample: XPSample, feature_set: str) -> tuple[np.ndarray, list[str]]:
    """Features (n, k) and their names for one of `FEATURE_SETS`."""
    columns: dict[str, np.ndarray] = {}
    c0 = {band: sample.coefficients[band][:, 0] for band in BANDS}
    if feature_set == "matching":
        values = matching_variables(sample)
        return values, ["log_bp0_over_rp0", "log_err_bp0_over_bp0"]
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
    top = {"first_five": 6, "low_order": LOW_ORDER_MAX + 1}.get(feature_set, XP_LENGTH)
    for band in BANDS:
        for i in range(1, top):
            columns[f"{band}{i}/{band}0"] = sample.coefficients[band][:, i] / c0[band]
    if feature_set == "all":
        for band in BANDS:
            for i in range(XP_LENGTH):
                columns[f"err_{band}{i}/{band}0"] = sample.errors[band][:, i] / c0[band]
    columns["bp0/rp0"] = c0["bp"] / c0["rp"]
    return np.stack(list(columns.values()), axis=1), list(columns)


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n1 n0), ties counted half)."""
    from scipy.stats import rankdata

    label = np.asarray(label, dtype=bool)
    ranks = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@dataclass(frozen=True)
class ClassifierResult:
    auc: float
    n_pairs: int
    importances: list[tuple[str, float]]
    """(feature, share of total gain), most separating first."""


def matched_classifier_auc(
    real: XPSample, simulated: XPSample, feature_set: str, folds: int = 5, seed: int = 0, n_threads: int = 2
) -> ClassifierResult:
    """Out-of-fold ROC AUC of an XGBoost classifier simulated-vs-real on matched pairs (pair-grouped CV)."""
    import xgboost

    rows_real, rows_sim = match_pairs(real, simulated)
    n_pairs = len(rows_real)
    if n_pairs < 4 * folds:
        raise ValueError(f"only {n_pairs} matched pairs: simulate more stars or widen the caliper")
    x_real, names = feature_table(real.take(rows_real), feature_set)
    x_sim, _ = feature_table(simulated.take(rows_sim), feature_set)
    x = np.concatenate([x_real, x_sim])
    y = np.concatenate([np.zeros(n_pairs), np.ones(n_pairs)])
    groups = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    score = np.zeros(len(y))
    gain = np.zeros(len(names))
    params = {
        "objective": "binary:logistic",
        "max_depth": 4,
        "eta": 0.1,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "nthread": n_threads,
        "seed": seed,
    }
    fold_of_pair = np.random.default_rng(seed).permutation(n_pairs) % folds
    fold = fold_of_pair[groups]
    safe_names = [f"f{i}" for i in range(len(names))]
    for k in range(folds):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        booster = xgboost.train(
            params, xgboost.DMatrix(x[train], label=y[train], feature_names=safe_names), num_boost_round=200
        )
        score[test] = booster.predict(xgboost.DMatrix(x[test], feature_names=safe_names))
        for name, value in booster.get_score(importance_type="total_gain").items():
            gain[int(name[1:])] += value
    share = gain / max(gain.sum(), 1e-300)
    order = np.argsort(share)[::-1]
    return ClassifierResult(
        auc=roc_auc(y, score),
        n_pairs=n_pairs,
        importances=[(names[i], float(share[i])) for i in order[:10]],
    )


def matched_medians(real: XPSample, simulated: XPSample, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Median of named features (as in `feature_table` 'all') for matched real and simulated stars."""
    rows_real, rows_sim = match_pairs(real, simulated)
    x_real, all_names = feature_table(real.take(rows_real), "all")
    x_sim, _ = feature_table(simulated.take(rows_sim), "all")
    index = {name: i for i, name in enumerate(all_names)}
    return {name: (float(np.median(x_real[:, index[name]])), float(np.median(x_sim[:, index[name]]))) for name in names}
