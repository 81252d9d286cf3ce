"""Stellar loci: Teff and colours the model predicts over a grid of (log g, [M/H])."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataset_builder.features import LOGEBV_FLOOR

from .plotting import new_figure, save_figure
from .spectra import SIGMA_SUFFIX

LOCI_REQUEST: tuple[str, ...] = ("teff", "bprp", "jh", "jk")


def stellar_loci(
    predictor,
    logg: np.ndarray,
    m_h: np.ndarray,
    request: tuple[str, ...] | list[str] = LOCI_REQUEST,
    logebv: float = LOGEBV_FLOOR,
) -> pd.DataFrame:
    """Predict ``request`` (default Teff and the BP-RP, J-H, J-K colours) on the grid ``logg x m_h``.

    Args:
        predictor: an ``AstroPredictor``.
        logg, m_h: 1-d grids of log g [dex] and [M/H] [dex].
        request: observations to predict at every grid point.
        logebv: ln E(B-V) given with every point (default: the dataset's floor for no extinction, -7).

    Returns:
        DataFrame with one row per (logg, m_h) pair (logg varying slowest): ``logg``, ``m_h`` and each
        requested ``<name>`` and ``<name>_sigma``.
    """
    logg, m_h = (
        np.atleast_1d(np.asarray(logg, dtype=np.float64)),
        np.atleast_1d(np.asarray(m_h, dtype=np.float64)),
    )
    if logg.ndim != 1 or m_h.ndim != 1 or not logg.size or not m_h.size:
        raise ValueError("logg and m_h must be non-empty 1-d grids.")
    grid_logg, grid_m_h = (axis.ravel() for axis in np.meshgrid(logg, m_h, indexing="ij"))
    inputs = {"logg": grid_logg, "m_h": grid_m_h, "logebv": np.full(grid_logg.size, float(logebv))}
    prediction = predictor.predict(inputs, list(request))
    return pd.concat([pd.DataFrame({"logg": grid_logg, "m_h": grid_m_h}), prediction], axis=1)


def plot_loci(loci: pd.DataFrame, path: str | os.PathLike, colour: str = "bprp") -> None:
    """Kiel diagram (Teff vs log g) and ``colour`` vs Teff, one line per [M/H] with 1-sigma bands; PNG."""
    figure, (kiel, colours) = new_figure(ncols=2, width=5.5)
    for m_h, locus in loci.groupby("m_h"):
        (line,) = kiel.plot(locus["teff"], locus["logg"], marker=".", label=f"[M/H] = {m_h:+.2f}")
        kiel.fill_betweenx(
            locus["logg"],
            locus["teff"] - locus["teff" + SIGMA_SUFFIX],
            locus["teff"] + locus["teff" + SIGMA_SUFFIX],
            color=line.get_color(),
            alpha=0.2,
            lw=0,
        )
        if colour in locus:
            colours.errorbar(
                locus["teff"],
                locus[colour],
                yerr=locus[colour + SIGMA_SUFFIX],
                marker=".",
                color=line.get_color(),
                lw=1,
                capsize=0,
            )
    kiel.invert_xaxis()
    kiel.invert_yaxis()
    kiel.set_xlabel("predicted Teff [K]")
    kiel.set_ylabel("log g [dex]")
    kiel.legend(fontsize=8)
    colours.invert_xaxis()
    colours.set_xlabel("predicted Teff [K]")
    colours.set_ylabel(f"predicted {colour} [mag]")
    save_figure(figure, path)


__all__ = ["LOCI_REQUEST", "plot_loci", "stellar_loci"]
