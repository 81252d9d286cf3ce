"""Similarity search: embed stars from their spectra only and find each star's nearest neighbours (cosine).

    PYTHONPATH=. python examples/similarity_search.py --model CHECKPOINT --data DATASET --out neighbours.png

Last line (JSON): the median |Teff| and |[M/H]| difference between each star and its top-1 neighbour,
against random pairs (truth columns when present, else the dataset labels), and the top-1 accuracy of
finding a star's labels-only embedding from its spectra-only one.
"""

import numpy as np
from _common import load_predictor, load_stars, parser, report

from modeling_astro.tasks import (
    LABELS_VIEW,
    SPECTRA_INPUTS,
    embed_stars,
    retrieval_accuracy,
    sample_xp,
    top_k_similar,
)
from modeling_astro.tasks.plotting import label_spectrum_axis, new_figure, save_figure


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], data=True)
    arguments.add_argument("--k", type=int, default=5, help="neighbours per star")
    args = arguments.parse_args()
    predictor = load_predictor(args)
    stars = load_stars(args)
    spectra = embed_stars(predictor, stars, SPECTRA_INPUTS)
    _, neighbours = top_k_similar(spectra, spectra, k=args.k, exclude_self=True)
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, len(stars), len(stars))
    result = {"task": "similarity_search", "n_stars": len(stars)}
    for name in ("teff", "m_h"):
        column = f"true_{name}" if f"true_{name}" in stars else name
        values = stars[column].to_numpy(np.float64)
        found = neighbours[:, 0] >= 0
        top1 = np.abs(values[found] - values[neighbours[found, 0]])
        result[f"median_abs_d{name}_top1"] = round(float(np.nanmedian(top1)), 3)
        result[f"median_abs_d{name}_random"] = round(
            float(np.nanmedian(np.abs(values - values[random_pairs]))), 3
        )
    labels = embed_stars(predictor, stars, LABELS_VIEW)
    both = np.isfinite(spectra).all(axis=1) & np.isfinite(labels).all(axis=1)
    result["spectra_to_labels_top1_accuracy"] = round(retrieval_accuracy(spectra[both], labels[both]), 4)
    result["n_stars_with_both_views"] = int(both.sum())
    if args.out:
        query = int(np.flatnonzero(neighbours[:, 0] >= 0)[0])
        rows = stars.iloc[[query, *neighbours[query]]]
        sampled = sample_xp(rows)
        figure, (axis,) = new_figure(width=7.0)
        for i, flux in enumerate(sampled.flux):
            axis.plot(
                sampled.wavelength,
                flux,
                color="k" if i == 0 else f"C{i}",
                lw=2 if i == 0 else 1,
                label="query" if i == 0 else f"neighbour {i}",
            )
        label_spectrum_axis(axis)
        save_figure(figure, args.out)
    report(result)


if __name__ == "__main__":
    main()
