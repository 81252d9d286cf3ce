"""`evaluate` metric module: robust residual statistics and calibration of predicted 1-sigma uncertainties.

    import evaluate
    metric = evaluate.load("path/to/modeling_astro/metrics/stellar_regression")              # with sigmas
    metric.compute(predictions=p, references=r, sigmas=s, reference_errors=e)
    evaluate.load("path/to/.../stellar_regression", "residuals").compute(predictions=p, references=r)

See README.md beside this file (the metric card) for the definitions.
"""

import datasets
import evaluate
import numpy as np
from astropy.stats import mad_std
from scipy.stats import norm

_DESCRIPTION = """
Per label: MAD-std (robust spread, 1.4826 x median absolute deviation from the median), bias (median residual),
RMSE, outlier fraction (|residual - bias| > `outlier_threshold` MAD-std), and, with predicted 1-sigma uncertainties,
the 1-sigma coverage (fraction with |z| < 1 for z = residual / sqrt(sigma^2 + reference_error^2)), the PIT histogram
(of Phi(z) in `pit_bins` equal bins, as fractions) and the calibration error (mean |empirical CDF of the PIT - p|
over the inner bin edges p). Residual = prediction - reference, in the units of the inputs.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values, shape (N,) or (N, L) for L labels.
    references: true values (labels), same shape.
    sigmas: predicted 1-sigma uncertainties, same shape (not in the "residuals" configuration).
    reference_errors: 1-sigma errors of the references, same shape; NaN counts as 0 (not in "residuals").
    label_names: names of the L columns of (N, L) inputs (default "0", "1", ...).
    ignore_nan: drop, per label, rows with a non-finite prediction, reference or sigma (missing labels); default
        False, which raises ValueError on any non-finite value.
    outlier_threshold: outliers are residuals beyond this many MAD-std of the bias (default 3).
    pit_bins: number of equal PIT histogram bins on [0, 1] (default 10).
Returns:
    For (N,) inputs a dict with `mad_std`, `bias`, `rmse`, `outlier_fraction`, `num_examples` and (with sigmas)
    `coverage_1sigma`, `pit_histogram`, `calibration_error`; for (N, L) inputs one such dict per label name.
Examples:
    >>> metric = evaluate.load("modeling_astro/metrics/stellar_regression")
    >>> metric.compute(predictions=[1.0, 2.1, 2.9], references=[1.0, 2.0, 3.0], sigmas=[0.1, 0.1, 0.1],
    ...                reference_errors=[0.0, 0.0, 0.0])["bias"]
    0.0
"""

_CITATION = """
@article{leung2024,
  title={Towards an astronomical foundation model for stars with a transformer-based model},
  author={Leung, Henry W. and Bovy, Jo},
  journal={Monthly Notices of the Royal Astronomical Society},
  volume={527}, pages={1494--1520}, year={2024}
}
"""

CONFIGS = ("default", "residuals")


def residual_statistics(residual: np.ndarray, outlier_threshold: float) -> dict[str, float]:
    """MAD-std, median bias, RMSE and outlier fraction of 1-d residuals (prediction - reference)."""
    spread = float(mad_std(residual))
    bias = float(np.median(residual))
    return {
        "mad_std": spread,
        "bias": bias,
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "outlier_fraction": float(np.mean(np.abs(residual - bias) > outlier_threshold * spread)),
    }


def calibration_statistics(residual: np.ndarray, sigma: np.ndarray, reference_error: np.ndarray, bins: int) -> dict:
    """1-sigma coverage, PIT histogram (fractions) and calibration error of z = residual / total sigma."""
    z = residual / np.sqrt(sigma**2 + np.nan_to_num(reference_error) ** 2)
    histogram, _ = np.histogram(norm.cdf(z), bins=bins, range=(0.0, 1.0))
    fractions = histogram / len(z)
    edges = np.arange(1, bins) / bins
    return {
        "coverage_1sigma": float(np.mean(np.abs(z) < 1)),
        "pit_histogram": fractions.tolist(),
        "calibration_error": float(np.mean(np.abs(np.cumsum(fractions)[:-1] - edges))),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StellarRegression(evaluate.Metric):
    """Robust regression and calibration metrics of stellar-parameter predictions (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIGS:
            raise ValueError(f"Unknown configuration {self.config_name!r} of stellar_regression; use one of {CONFIGS}.")
        names = ["predictions", "references"]
        if self.config_name == "default":
            names += ["sigmas", "reference_errors"]
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({name: datasets.Value("float64") for name in names}),
                datasets.Features({name: datasets.Sequence(datasets.Value("float64")) for name in names}),
            ],
            reference_urls=["https://doi.org/10.1093/mnras/stad3015"],
        )

    def _compute(
        self,
        predictions,
        references,
        sigmas=None,
        reference_errors=None,
        label_names=None,
        ignore_nan: bool = False,
        outlier_threshold: float = 3.0,
        pit_bins: int = 10,
    ) -> dict:
        columns = {"predictions": predictions, "references": references}
        if self.config_name == "default":
            columns.update(sigmas=sigmas, reference_errors=reference_errors)
        columns = {key: np.asarray(value, dtype=float) for key, value in columns.items()}
        single = columns["predictions"].ndim == 1
        columns = {key: value[:, None] if single else value for key, value in columns.items()}
        num_labels = columns["predictions"].shape[1]
        names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        if len(names) != num_labels:
            raise ValueError(f"label_names has {len(names)} names for {num_labels} label columns.")
        results = {}
        for i, name in enumerate(names):
            values = {key: value[:, i] for key, value in columns.items()}
            finite = np.all([np.isfinite(values[key]) for key in values if key != "reference_errors"], axis=0)
            if not finite.all():
                if not ignore_nan:
                    bad = [key for key in values if key != "reference_errors" and not np.isfinite(values[key]).all()]
                    raise ValueError(
                        f"Label {name!r}: {int((~finite).sum())} rows have non-finite {bad}; pass ignore_nan=True "
                        "to leave them out (e.g. stars without the label)."
                    )
                values = {key: value[finite] for key, value in values.items()}
            if len(values["predictions"]) == 0:
                raise ValueError(f"Label {name!r} has no row with finite prediction, reference and sigma.")
            residual = values["predictions"] - values["references"]
            entry = {"num_examples": len(residual), **residual_statistics(residual, outlier_threshold)}
            if self.config_name == "default":
                entry.update(calibration_statistics(residual, values["sigmas"], values["reference_errors"], pit_bins))
            results[name] = entry
        return results[names[0]] if single else results
