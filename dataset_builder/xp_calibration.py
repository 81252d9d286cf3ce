"""Empirical calibration of the simulated XP spectra to real Gaia DR3: the last step of ``xp_model="hermite"``.

The forward model (`xp_forward`) maps the simulator's model spectra to coefficients through the instrument,
but the model spectra are not real stars. At matched colour and S/N a classifier told the two apart with
ROC AUC 1.000 on coefficients 1-5 alone, for two reasons measured on the real sample:

1. the low-order shape of the model spectra differs from real stars by up to 0.02 of c0 (bp5 / bp0 at
   colour log10(bp0 / rp0) = -0.3), and real DR3 coefficients carry a dependence on S/N (so on magnitude:
   the calibration's systematics, the population) that no spectrum of a star produces;
2. real error profiles err_i / err_0 vary from star to star in a way no median profile has.

This module measures both on real DR3 spectra and maps the simulation onto them, star by star:

- **means**: the ratios r_i = c_i / c0 (i = 1..54, both bands) as a smooth function of colour
  x = log10(bp0 / rp0) and S/N s = log10(err(bp0) / bp0): a local-linear fit in x (knots every
  `KNOT_STEP`; at each the narrowest Gaussian kernel of `BANDWIDTHS` holding `MIN_SUPPORT` real stars)
  with a quadratic in s; for the real stars with inverse-variance weights (floor `MEAN_FLOOR`), for the
  noise-free simulation unweighted;
- **residuals** about those means: for i <= `LOW_ORDERS` (both bands jointly) the optimal-transport map between
  Gaussian fits of the simulated and the real (noise subtracted) residual distributions at each knot and each
  of the `LOG_SN_BINS`, ``A = S^-1/2 (S^1/2 R S^1/2)^1/2 S^-1/2``; for higher i a per-coefficient scale (at
  most 1, so the simulated structure only shrinks towards the real, noise-dominated level). A simulated star
  keeps its rank in the distribution, set by its physics (Teff, log g, [M/H], extinction), and the
  distribution takes the real one's first two moments. Where the real sample has no stars of a colour (hot
  OBA stars, very red giants), the simulation is left as the forward model made it (`support` blends between
  the two);
- **error profiles**: each simulated star gets the err_i / err_0 profile (both bands) of one of the
  `NEIGHBOURS` real stars nearest in (colour, S/N); err_0 itself is `xp_errors.sigma0`.

The calibration is fitted on `realism.calibration_half` of the real sample (1,111 of its 2,000 stars) and shipped
as ``data/xp_calibration.npz``; realism is measured on the other half (`benchmarks/bench_realism.py`). Refit
whenever the simulator's physics changes: ``python -m dataset_builder.xp_calibration``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from .schema import XP_LENGTH

BANDS = ("bp", "rp")
KNOT_STEP = 0.0125
KNOTS = np.round(np.arange(-1.0, 0.25 + KNOT_STEP / 2, KNOT_STEP), 6)
"""Colour knots x = log10(bp0 / rp0) of the calibration (real DR3 stars span about -0.7 to 0.1)."""
BANDWIDTHS = (0.02, 0.03, 0.045, 0.07, 0.1)
"""Gaussian kernel widths [dex in bp0 / rp0] of the local fits: at each knot the narrowest that holds
`MIN_SUPPORT` real stars (narrow where the real sample is dense, wider in its red tail)."""
LOG_SN_BINS = (-2.9, -2.35)
"""log10(err(bp0) / bp0) centres of the residual maps (bright, faint); interpolated linearly between them."""
LOG_SN_BIN_WIDTH = 0.25
"""Gaussian width [dex] of the S/N weights of each residual map."""
LOG_SN_RANGE = (-3.4, -1.9)
"""log10(err(bp0) / bp0) range of the S/N terms (G ~ 10-19); values beyond are clipped."""
LOG_SN_REFERENCE = -2.7
LOW_ORDERS = 16
"""Ratios i = 1..16 of each band are mapped jointly (a 32-dimensional transport map per knot)."""
SHRINKAGE = 0.3
"""Covariance shrinkage towards the diagonal (0-1) for the transport maps."""
MEAN_FLOOR = 5e-4
"""Intrinsic scatter [of c0] added to the real stars' errors in the inverse-variance weights of the means."""
MIN_SUPPORT = 30.0
"""Effective number of real stars a knot needs to be calibrated (fewer: the forward model is kept)."""
NEIGHBOURS = 8
CALIBRATION_FILE = "xp_calibration.npz"


def ratios(coefficients: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 108): c_i / c0 for i = 1..54 of BP, then of RP."""
    return np.concatenate([coefficients[band][:, 1:] / coefficients[band][:, :1] for band in BANDS], axis=1)


def colour_and_log_sn(coefficients: dict[str, np.ndarray], bp_sigma0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = log10(bp0 / rp0) and s = log10(err(bp0) / bp0) of each star (the matching variables of `realism`)."""
    bp0, rp0 = coefficients["bp"][:, 0], coefficients["rp"][:, 0]
    return np.log10(bp0 / rp0), np.log10(np.asarray(bp_sigma0) / bp0)


def _kernel(colour: np.ndarray, knot: float, width: float) -> np.ndarray:
    weight = np.exp(-0.5 * ((colour - knot) / width) ** 2)
    return weight / max(weight.sum(), 1e-300)


def _effective_number(weight: np.ndarray) -> float:
    return float(weight.sum() ** 2 / max((weight**2).sum(), 1e-300))


def knot_bandwidths(real_colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per knot, the narrowest of `BANDWIDTHS` holding `MIN_SUPPORT` real stars, and whether any does (0/1)."""
    widths, support = [], []
    for knot in KNOTS:
        counts = [_effective_number(np.exp(-0.5 * ((real_colour - knot) / w) ** 2)) for w in BANDWIDTHS]
        enough = [w for w, n in zip(BANDWIDTHS, counts) if n >= MIN_SUPPORT]
        widths.append(enough[0] if enough else BANDWIDTHS[-1])
        support.append(1.0 if enough else 0.0)
    return np.asarray(widths), np.asarray(support)


def _interpolation_weights(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, n_centres) weights of linear interpolation between sorted ``centres``, clamped at both ends."""
    centres = np.asarray(centres)
    if len(centres) == 1:
        return np.ones((len(values), 1))
    position = np.interp(values, centres, np.arange(len(centres)))  # np.interp clamps outside the centres
    left = np.clip(np.floor(position).astype(int), 0, len(centres) - 2)
    t = position - left
    weights = np.zeros((len(values), len(centres)))
    weights[np.arange(len(values)), left] = 1 - t
    weights[np.arange(len(values)), left + 1] += t
    return weights


def _mean_at(surface: np.ndarray, knot_weights: np.ndarray, log_sn: np.ndarray) -> np.ndarray:
    """(n, k): a mean surface (n_knots, 3, k) at each star's colour (its knot weights) and log S/N."""
    per_term = np.einsum("nk,ktj->ntj", knot_weights, surface)
    return np.einsum("ntj,nt->nj", per_term, _sn_terms(log_sn))


def _sn_terms(log_sn: np.ndarray) -> np.ndarray:
    d = np.clip(log_sn, *LOG_SN_RANGE) - LOG_SN_REFERENCE
    return np.stack([np.ones_like(d), d, d * d], axis=1)


def _mean_surface(
    colour: np.ndarray, log_sn: np.ndarray, values: np.ndarray, noise: np.ndarray | None, widths: np.ndarray
) -> np.ndarray:
    """(n_knots, 3, k): per knot, the constant, linear and quadratic S/N terms of the local-linear mean."""
    sn = _sn_terms(log_sn)
    out = np.zeros((len(KNOTS), 3, values.shape[1]))
    for k, knot in enumerate(KNOTS):
        design = np.concatenate([sn[:, :1], (colour - knot)[:, None], sn[:, 1:]], axis=1)  # 1, dx, ds, ds^2
        kernel = _kernel(colour, knot, widths[k])
        if noise is None:  # one weighted least-squares problem for all columns
            gram = (design * kernel[:, None]).T @ design
            gram += 1e-9 * np.trace(gram) * np.eye(4)
            out[k] = np.linalg.solve(gram, (design * kernel[:, None]).T @ values)[[0, 2, 3]]
            continue
        weights = kernel[:, None] / (noise**2 + MEAN_FLOOR**2)
        for j in range(values.shape[1]):
            gram = (design * weights[:, j : j + 1]).T @ design
            gram += 1e-9 * np.trace(gram) * np.eye(4)
            out[k, :, j] = np.linalg.solve(gram, (design * weights[:, j : j + 1]).T @ values[:, j])[[0, 2, 3]]
    return out


def _psd(matrix: np.ndarray, floor: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix with eigenvalues clipped at ``floor``."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return np.clip(values, floor, None), vectors


def _transport_map(simulated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The linear optimal-transport map between zero-mean Gaussians of covariance ``simulated`` and ``real``."""
    values, vectors = _psd(simulated)
    root, inverse_root = (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T
    middle_values, middle_vectors = _psd(root @ real @ root, 0.0)
    middle = (middle_vectors * np.sqrt(middle_values)) @ middle_vectors.T
    return inverse_root @ middle @ inverse_root


def _covariance(kernel: np.ndarray, residuals: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    covariance = (kernel[:, None] * residuals).T @ residuals
    if noise is not None:
        covariance -= np.diag(kernel @ noise**2)
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance))
    values, vectors = _psd(covariance, 1e-10)
    return (vectors * values) @ vectors.T


@dataclass(frozen=True)
class XPCalibration:
    """The fitted calibration (module doc); arrays indexed by knot first."""

    real_mean: np.ndarray
    """(n_knots, 3, 108) mean surface of the real ratios."""
    simulated_mean: np.ndarray
    """(n_knots, 3, 108) mean surface of the noise-free simulated ratios."""
    low_maps: np.ndarray
    """(n_knots, n_sn_bins, 2 LOW_ORDERS, 2 LOW_ORDERS) transport maps of the low-order residuals."""
    high_scale: np.ndarray
    """(n_knots, n_sn_bins, 108 - 2 LOW_ORDERS) scale of the higher-order residuals."""
    support: np.ndarray
    """(n_knots,) 1 where the real sample calibrates the knot, 0 where the forward model is kept."""
    profile_keys: np.ndarray
    """(m, 2) colour and log S/N of the real stars whose error profiles are drawn."""
    profiles: np.ndarray
    """(m, 2, 55) err_i / err_0 of those stars (BP, RP), float32."""

    @staticmethod
    def columns() -> tuple[np.ndarray, np.ndarray]:
        """Indices (into the 108 ratios) of the low orders mapped jointly, and of the rest."""
        low = np.concatenate([np.arange(LOW_ORDERS), (XP_LENGTH - 1) + np.arange(LOW_ORDERS)])
        return low, np.setdiff1d(np.arange(2 * (XP_LENGTH - 1)), low)

    def apply(self, coefficients: dict[str, np.ndarray], bp_sigma0: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated noise-free coefficients {band: (n, 55)} [e-/s]; c0 is unchanged.

        ``bp_sigma0`` (n,) is the error that will be given to bp0 (it sets the S/N the real means depend on).
        Stars without a positive c0 in both bands are returned unchanged.
        """
        out = {band: np.array(values, dtype=np.float64, copy=True) for band, values in coefficients.items()}
        good = (out["bp"][:, 0] > 0) & (out["rp"][:, 0] > 0)
        if not good.any():
            return out
        clean = {band: out[band][good] for band in BANDS}
        colour, log_sn = colour_and_log_sn(clean, np.asarray(bp_sigma0)[good])
        weights = _interpolation_weights(colour, KNOTS)
        support = weights @ self.support
        support *= (colour >= KNOTS[0]) & (colour <= KNOTS[-1])
        r = ratios(clean)
        residual = r - _mean_at(self.simulated_mean, weights, log_sn)
        low, high = self.columns()
        mapped = _mean_at(self.real_mean, weights, log_sn)
        sn_weights = _interpolation_weights(log_sn, LOG_SN_BINS)
        cell = (weights[:, :, None] * sn_weights[:, None, :]).reshape(len(r), -1)  # (n, knots x bins), 4 non-zero
        maps = (cell @ self.low_maps.reshape(cell.shape[1], -1)).reshape(len(r), len(low), len(low))
        mapped[:, low] += np.einsum("nij,nj->ni", maps, residual[:, low])
        mapped[:, high] += (cell @ self.high_scale.reshape(cell.shape[1], -1)) * residual[:, high]
        r = support[:, None] * mapped + (1 - support[:, None]) * r
        for b, band in enumerate(BANDS):
            span = slice(b * (XP_LENGTH - 1), (b + 1) * (XP_LENGTH - 1))
            out[band][np.flatnonzero(good)[:, None], np.arange(1, XP_LENGTH)[None, :]] = r[:, span] * clean[band][:, :1]
        return out

    def error_profiles(self, rng: np.random.Generator, colour: np.ndarray, log_sn: np.ndarray) -> dict[str, np.ndarray]:
        """err_i / err_0 {band: (n, 55)}: the profiles of real stars near each (colour, log S/N)."""
        from scipy.spatial import cKDTree

        scale = self.profile_keys.std(axis=0)
        keys = np.stack([np.nan_to_num(colour), np.nan_to_num(log_sn, nan=LOG_SN_REFERENCE)], axis=1)
        _, nearest = cKDTree(self.profile_keys / scale).query(keys / scale, k=NEIGHBOURS)
        pick = nearest[np.arange(len(keys)), rng.integers(0, NEIGHBOURS, len(keys))]
        return {band: self.profiles[pick, b].astype(np.float64) for b, band in enumerate(BANDS)}

    def save(self, path: str | Path) -> None:
        from modeling_astro.io_utils import atomic_path

        arrays = {name: getattr(self, name) for name in self.__dataclass_fields__}
        arrays["low_maps"] = arrays["low_maps"].astype(np.float32)  # halves the shipped file; maps need no more
        with atomic_path(path) as temporary, open(temporary, "wb") as file:  # a handle: savez adds no suffix
            np.savez_compressed(file, knots=KNOTS, **arrays)


def fit_calibration(
    real_coefficients: dict[str, np.ndarray],
    real_errors: dict[str, np.ndarray],
    simulated_coefficients: dict[str, np.ndarray],
    simulated_bp_sigma0: np.ndarray,
) -> XPCalibration:
    """Fit the calibration (module doc) from real DR3 stars and noise-free simulated ones [e-/s], {band: (n, 55)}."""
    colour_r, sn_r = colour_and_log_sn(real_coefficients, real_errors["bp"][:, 0])
    colour_s, sn_s = colour_and_log_sn(simulated_coefficients, simulated_bp_sigma0)
    r_real, r_sim = ratios(real_coefficients), ratios(simulated_coefficients)
    noise = np.concatenate([real_errors[band][:, 1:] / real_coefficients[band][:, :1] for band in BANDS], axis=1)
    widths, support = knot_bandwidths(colour_r)
    real_mean = _mean_surface(colour_r, sn_r, r_real, noise, widths)
    simulated_mean = _mean_surface(colour_s, sn_s, r_sim, None, widths)
    residual_r = r_real - _mean_at(real_mean, _interpolation_weights(colour_r, KNOTS), sn_r)
    residual_s = r_sim - _mean_at(simulated_mean, _interpolation_weights(colour_s, KNOTS), sn_s)
    low, high = XPCalibration.columns()
    maps = np.zeros((len(KNOTS), len(LOG_SN_BINS), len(low), len(low)))
    scales = np.zeros((len(KNOTS), len(LOG_SN_BINS), len(high)))
    for k, knot in enumerate(KNOTS):
        for b, centre in enumerate(LOG_SN_BINS):
            kernel_r, kernel_s = (
                _kernel(colour, knot, widths[k]) * np.exp(-0.5 * ((sn - centre) / LOG_SN_BIN_WIDTH) ** 2)
                for colour, sn in ((colour_r, sn_r), (colour_s, sn_s))
            )
            kernel_r, kernel_s = kernel_r / max(kernel_r.sum(), 1e-300), kernel_s / max(kernel_s.sum(), 1e-300)
            maps[k, b] = _transport_map(
                _covariance(kernel_s, residual_s[:, low], None),
                _covariance(kernel_r, residual_r[:, low], noise[:, low]),
            )
            spread_s = np.sqrt(kernel_s @ residual_s[:, high] ** 2)
            spread_r = np.sqrt(np.clip(kernel_r @ residual_r[:, high] ** 2 - kernel_r @ noise[:, high] ** 2, 0, None))
            scales[k, b] = np.clip(spread_r / np.maximum(spread_s, 1e-12), 0.0, 1.0)
    profiles = np.stack([real_errors[band] / real_errors[band][:, :1] for band in BANDS], axis=1).astype(np.float32)
    return XPCalibration(
        real_mean=real_mean,
        simulated_mean=simulated_mean,
        low_maps=maps,
        high_scale=scales,
        support=support,
        profile_keys=np.stack([colour_r, sn_r], axis=1),
        profiles=profiles,
    )


def load_calibration(path: str | Path) -> XPCalibration:
    """A calibration written by `XPCalibration.save`; refused if it was fitted on other colour knots."""
    with np.load(path) as data:
        if data["knots"].shape != KNOTS.shape or not np.allclose(data["knots"], KNOTS):
            raise ValueError(
                f"{path} was fitted on other colour knots than this code uses; "
                "refit it: python -m dataset_builder.xp_calibration --real <real_xp_sample fits>"
            )
        return XPCalibration(
            **{
                name: data[name].astype(np.float64) for name in XPCalibration.__dataclass_fields__ if name != "profiles"
            },
            profiles=data["profiles"],
        )


@cache
def shipped_calibration() -> XPCalibration:
    """The calibration shipped with the package (``dataset_builder/data/xp_calibration.npz``)."""
    with resources.as_file(resources.files("dataset_builder") / "data" / CALIBRATION_FILE) as path:
        return load_calibration(path)


def noise_free_simulation(n_stars: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Noise-free forward-model coefficients {band: (n, 55)} of a simulated population and its bp sigma0 (n,)."""
    from . import xp_errors
    from .populations import HOT_STAR_FRACTION, sample_stars
    from .simulate import _BATCH, _Instrument

    rng = np.random.default_rng(seed)
    sample = sample_stars(rng, n_stars, hot_star_fraction=HOT_STAR_FRACTION)
    instrument = _Instrument("hermite")
    parts = [instrument.observe(sample, np.arange(s, min(s + _BATCH, n_stars))) for s in range(0, n_stars, _BATCH)]
    coefficients = {band: np.concatenate([p[f"{band}_coefficients"] for p in parts]) for band in BANDS}
    good = (coefficients["bp"][:, 0] > 0) & (coefficients["rp"][:, 0] > 0)
    coefficients = {band: values[good] for band, values in coefficients.items()}
    return coefficients, xp_errors.sigma0(rng, "bp", coefficients["bp"][:, 0])


def main(argv: list[str] | None = None) -> None:
    """Refit ``data/xp_calibration.npz`` from the calibration half of the real sample."""
    from .realism import calibration_half, read_flat_real_sample

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--real", type=Path, required=True, help="real_xp_sample/xp_continuous_2000_sources.fits")
    parser.add_argument("--n-stars", type=int, default=20_000, help="simulated stars of the fit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / CALIBRATION_FILE)
    args = parser.parse_args(argv)
    real = read_flat_real_sample(args.real)
    real = real.take(np.flatnonzero(calibration_half(real.source_id)))
    simulated, sigma0 = noise_free_simulation(args.n_stars, args.seed)
    calibration = fit_calibration(real.coefficients, real.errors, simulated, sigma0)
    calibration.save(args.out)
    print(
        f"fitted on {len(real)} real and {len(sigma0)} simulated stars; {int(calibration.support.sum())} of "
        f"{len(KNOTS)} colour knots calibrated; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
