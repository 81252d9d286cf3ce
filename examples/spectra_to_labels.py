"""Spectra -> labels: Teff, log g, [M/H], E(B-V) and distance of stars from their XP spectra and colours.

    PYTHONPATH=. python examples/spectra_to_labels.py --model CHECKPOINT --data DATASET --out labels.png

Compares with the truth columns of a simulated survey (``true_teff``, ..., ``true_parallax``) when present,
else with the dataset's own labels; prints robust scatters as the last line (JSON).
"""

import numpy as np
from _common import load_predictor, load_stars, parser, report
from astropy.stats import mad_std

from modeling_astro.tasks import plot_label_comparison, predict_labels

REFERENCES = {"teff": ("true_teff", "teff"), "logg": ("true_logg", "logg"), "m_h": ("true_m_h", "m_h")}


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], data=True)
    arguments.add_argument("--g-column", default="true_g", help="column with the apparent G magnitude")
    args = arguments.parse_args()
    predictor = load_predictor(args)
    stars = load_stars(args)
    g_mag = args.g_column if args.g_column in stars else None
    labels = predict_labels(predictor, stars, g_mag=g_mag)
    result = {"task": "spectra_to_labels", "n_stars": len(stars)}
    truth = {}
    for name, candidates in REFERENCES.items():
        column = next((c for c in candidates if c in stars), None)
        if column is not None:
            truth[name] = stars[column].to_numpy(np.float64)
            residual = labels[name] - truth[name]
            result[f"{name}_mad_std_vs_{column}"] = round(float(mad_std(residual, ignore_nan=True)), 4)
    if g_mag is not None and "true_parallax" in stars:
        truth["distance_pc"] = 1000.0 / stars["true_parallax"].to_numpy(np.float64)
        relative = labels["distance_pc"] / truth["distance_pc"] - 1
        result["distance_median_abs_rel_error"] = round(float(np.nanmedian(np.abs(relative))), 4)
    if args.out:
        plot_label_comparison(labels, truth, args.out)
    report(result)


if __name__ == "__main__":
    main()
