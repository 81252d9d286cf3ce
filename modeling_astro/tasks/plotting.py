"""Atomic PNG writing for the task plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    """A figure with ``ncols`` side-by-side axes: ``(figure, axes)`` (axes is a list)."""
    # importing gaiaxpy sets text.usetex=True globally, which fails without a LaTeX installation
    matplotlib.rcParams["text.usetex"] = False
    figure, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return figure, list(axes[0])


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path
