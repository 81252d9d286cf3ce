"""Inpainting: predict RP from BP and BP from RP, and fill masked high-order XP coefficients.

    PYTHONPATH=. python examples/inpainting.py --model CHECKPOINT --data DATASET --out inpainting.png

Last line (JSON): the median relative error of the sampled flux with the predicted band in its own range
(RP 700-1000 nm, BP 400-600 nm), and the median |z| of high-order coefficients (index >= --keep) filled
after masking them, against the observed values (z with the predicted and the observed sigma combined;
0.674 for calibrated Gaussian errors).
"""

import numpy as np
import pandas as pd
from _common import load_predictor, load_stars, parser, report

from modeling_astro.tasks import (
    BP_NAMES,
    RP_NAMES,
    XP_NAMES,
    fill_missing_coefficients,
    inpaint_band,
    sample_xp,
)
from modeling_astro.tasks.plotting import label_spectrum_axis, new_figure, save_figure

RANGES = {"rp": (700.0, 1000.0), "bp": (400.0, 600.0)}


def band_flux_error(stars: pd.DataFrame, predicted: pd.DataFrame, band: str) -> tuple[float, tuple]:
    """Median |relative flux error| in the band's range with its coefficients replaced by ``predicted``."""
    observed = sample_xp(stars)
    replaced = stars[list(XP_NAMES)].copy()
    names = RP_NAMES if band == "rp" else BP_NAMES
    replaced[list(names)] = predicted[list(names)].to_numpy()
    inpainted = sample_xp(replaced)
    inside = (observed.wavelength >= RANGES[band][0]) & (observed.wavelength <= RANGES[band][1])
    error = np.abs(inpainted.flux[:, inside] / observed.flux[:, inside] - 1)
    return float(np.nanmedian(error)), (observed, inpainted)


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], data=True)
    arguments.add_argument("--keep", type=int, default=20, help="mask coefficients from this index on")
    args = arguments.parse_args()
    predictor = load_predictor(args)
    stars = load_stars(args)
    complete = stars[np.isfinite(stars[list(XP_NAMES[:20]) + list(RP_NAMES[:20])]).all(axis=1)]
    complete = complete.reset_index(drop=True)
    result = {"task": "inpainting", "n_stars": len(complete)}
    examples = {}
    for source, target in (("bp", "rp"), ("rp", "bp")):
        predicted = inpaint_band(predictor, complete, source=source)
        error, examples[target] = band_flux_error(complete, predicted, target)
        result[f"{source}_to_{target}_median_rel_flux_error"] = round(error, 4)
    masked = complete.copy()
    high = [f"{band}{i}" for band in ("bp", "rp") for i in range(args.keep, 55)]
    masked[high] = np.nan
    filled = fill_missing_coefficients(predictor, masked)
    # the observed coefficients are noisy: compare with the predicted and the observed sigma combined
    sigma = np.hypot(filled[[f"{n}_sigma" for n in high]].to_numpy(), complete[[f"{n}_err" for n in high]].to_numpy())
    z = (filled[high].to_numpy() - complete[high].to_numpy()) / sigma
    result[f"filled_coefficients_{args.keep}_54_median_abs_z"] = round(float(np.nanmedian(np.abs(z))), 3)
    if args.out:
        figure, axes = new_figure(ncols=2, width=5.5)
        for axis, (band, (observed, inpainted)) in zip(axes, examples.items(), strict=True):
            axis.plot(observed.wavelength, observed.flux[0], color="k", label="observed")
            axis.plot(inpainted.wavelength, inpainted.flux[0], color="C1", label=f"{band.upper()} predicted")
            axis.axvspan(*RANGES[band], color="0.93", zorder=-1)
            label_spectrum_axis(axis)
        save_figure(figure, args.out)
    report(result)


if __name__ == "__main__":
    main()
