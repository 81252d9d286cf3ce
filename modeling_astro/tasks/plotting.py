"""Atomic PNG writing for the task plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

from ..io_utils import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    """A figure with ``ncols`` side-by-side axes: ``(figure, axes)`` (axes is a list)."""
    # importing gaiaxpy sets text.usetex=True globally, which fails without a LaTeX installation
    matplotlib.rcParams["text.usetex"] = False
    figure, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return figure, list(axes[0])


def label_spectrum_axis(axis) -> None:
    """Axis labels of a sampled XP spectrum (wavelength in nm, flux divided by the G-band flux) and its legend."""
    axis.set_xlabel("wavelength [nm]")
    axis.set_ylabel("flux / f_G")
    axis.legend()


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
