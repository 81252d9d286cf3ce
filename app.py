"""A Gradio demo of the Astro foundation model: spectra -> labels, labels -> spectra, inpainting, stellar loci.

Run it locally or as a Hugging Face Space (``sdk: gradio``, ``app_file: app.py``)::

    python app.py --model my_model                 # a checkpoint folder (train.py's output) ...
    ASTRO_MODEL=<user>/<repo> python app.py        # ... or a Hub repository id, as the Space setting

The server address and port follow Gradio's settings (``--host`` / ``--port`` or ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``). Everything the page shows comes from the project's public API: `AstroPredictor`, the
`dataset_builder` reader of Gaia archive XP files and the functions of `modeling_astro.tasks`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import gradio as gr  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_builder import DatasetBuildError, read_xp_continuous  # noqa: E402
from dataset_builder.features import LOGEBV_FLOOR, normalised_xp  # noqa: E402
from modeling_astro.feature_extraction_astro import ObservationNameError  # noqa: E402
from modeling_astro.inference import AstroPredictor  # noqa: E402
from modeling_astro.tasks import (  # noqa: E402
    BP_NAMES,
    RP_NAMES,
    SPECTRA_INPUTS,
    XP_NAMES,
    generate_spectra,
    inpaint_band,
    plot_loci,
    predict_labels,
    sample_xp,
    stellar_loci,
)
from modeling_astro.tasks.plotting import new_figure  # noqa: E402

MODEL_ENV = "ASTRO_MODEL"
"""Environment variable naming the checkpoint folder or Hub repository id (the Space setting)."""
TABLE_LABELS: tuple[str, ...] = ("teff", "logg", "m_h", "ebv")
"""The labels of the prediction table, each followed by its ``_sigma`` column."""
LABEL_TITLES = {"teff": "Teff [K]", "logg": "log g [dex]", "m_h": "[M/H] [dex]", "ebv": "E(B-V) [mag]"}
FROM_LABELS = ("teff", "logg", "m_h", "logebv")
EXAMPLE_COLOURS = "bprp,jh,jk\n0.82,0.33,0.40\n1.25,0.62,0.78\n"
BANDS = {"bp": BP_NAMES, "rp": RP_NAMES}


class DemoInputError(ValueError):
    """A user input the demo cannot use; the message says what is wrong and what to do."""


def _figure_image(figure) -> Image.Image:
    """Render a matplotlib figure to an RGB PIL image (100 dpi, the figure's size: a fixed-size plot) and close it."""
    figure.set_layout_engine("constrained")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def parse_g_mag(text: str | None) -> float | None:
    """The G magnitude typed in the page: None when empty; a clear error when it is not a finite number."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise DemoInputError(f"The G magnitude must be a number (e.g. 15.2), got {text!r}.") from None
    if not np.isfinite(value):
        raise DemoInputError(f"The G magnitude must be a finite number, got {text!r}.")
    return value


def xp_file_stars(path: str | os.PathLike, g_mag: float | None = None) -> pd.DataFrame:
    """Model inputs of the stars of a Gaia archive XP_CONTINUOUS file (any format `read_xp_continuous` reads).

    The coefficients and errors are divided by the G-band flux f_G, as the dataset builder does, from the file's
    ``phot_g_mean_mag`` column or, for files without it, from ``g_mag`` [mag] (one G for all stars).

    Returns:
        DataFrame with ``source_id``, ``bp0..bp54``, ``rp0..rp54`` and their ``_err`` columns (NaN = missing).
    """
    xp = read_xp_continuous(path)
    if xp.phot_g_mean_mag is not None and np.isfinite(xp.phot_g_mean_mag).all():
        g = xp.phot_g_mean_mag
    elif g_mag is not None:
        g = np.full(len(xp), float(g_mag))
    else:
        raise DemoInputError(
            f"{Path(path).name}: the file has no phot_g_mean_mag column (or it has empty cells), and the "
            "coefficients are divided by the G-band flux: enter the stars' G magnitude."
        )
    columns: dict[str, np.ndarray] = {"source_id": xp.source_id}
    for band, names in BANDS.items():
        values, errors = normalised_xp(
            getattr(xp, f"{band}_coefficients"),
            getattr(xp, f"{band}_coefficient_errors"),
            getattr(xp, f"{band}_n_relevant_bases"),
            g,
        )
        for i, name in enumerate(names):
            columns[name], columns[f"{name}_err"] = values[:, i], errors[:, i]
    return pd.DataFrame(columns)


def parse_observations(text: str, known: Sequence[str]) -> pd.DataFrame:
    """Stars typed or pasted as CSV text: a header of observation names (e.g. ``bprp,jh,jk``, optionally
    ``<name>_err`` columns), one star per line, in physical units; empty cells are missing values."""
    if not text or not text.strip():
        raise DemoInputError("No stars given: paste a header line such as 'bprp,jh,jk' and one star per line.")
    try:
        header = text.strip().splitlines()[0]
        separator = next((mark for mark in (",", "\t", ";") if mark in header), r"\s+")
        frame = pd.read_csv(io.StringIO(text.strip()), sep=separator, engine="python", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise DemoInputError(f"The pasted table cannot be read as CSV ({error}).") from error
    frame.columns = [str(name).strip() for name in frame.columns]
    unknown = [name for name in frame.columns if name.removesuffix("_err") not in known and name != "source_id"]
    if unknown:
        raise DemoInputError(
            f"Unknown column(s) {unknown}: use the model's observation names, e.g. bprp, jh, jk, bp0, teff "
            "(and <name>_err for errors)."
        )
    if frame.empty:
        raise DemoInputError("The pasted table has a header but no star: add one line of values per star.")
    try:
        frame = frame.astype({name: np.float64 for name in frame.columns if name != "source_id"})
    except ValueError as error:
        raise DemoInputError(f"The pasted values must be numbers ({error}).") from error
    return frame


def label_table(predictor: AstroPredictor, stars: pd.DataFrame, inputs: Sequence[str]) -> pd.DataFrame:
    """Teff, log g, [M/H], E(B-V) and their sigmas (physical units) of ``stars`` from the columns ``inputs``."""
    labels = predict_labels(predictor, stars, inputs=tuple(inputs))
    table = pd.DataFrame({"source_id": stars["source_id"].astype(str)} if "source_id" in stars else {})
    for name in TABLE_LABELS:
        table[name] = labels[name].to_numpy(dtype=np.float64)
        table[f"{name}_sigma"] = labels[f"{name}_sigma"].to_numpy(dtype=np.float64)
    return table


def predicted_vs_input_plot(
    predictor: AstroPredictor, stars: pd.DataFrame, inputs: Sequence[str], labels: pd.DataFrame
) -> Image.Image:
    """Each input observation against the model's prediction of it from the predicted labels alone
    (Teff, log g, [M/H], ln E(B-V)): how well the labels explain the data, per star."""
    given = [name for name in inputs if name in stars and np.isfinite(stars[name].to_numpy(np.float64)).any()]
    from_labels = {"teff": labels["teff"], "logg": labels["logg"], "m_h": labels["m_h"]}
    from_labels["logebv"] = np.log(np.clip(labels["ebv"].to_numpy(np.float64), np.exp(LOGEBV_FLOOR), None))
    regenerated = predictor.predict(from_labels, given)
    figure, (axis,) = new_figure(width=5.5, height=4.5)
    values = []
    for row in range(len(stars)):
        observed = stars[given].to_numpy(np.float64)[row]
        predicted = regenerated[given].to_numpy(np.float64)[row]
        sigma = regenerated[[f"{name}_sigma" for name in given]].to_numpy(np.float64)[row]
        name = str(stars["source_id"].iloc[row]) if "source_id" in stars else f"star {row}"
        axis.errorbar(observed, predicted, yerr=sigma, fmt="o", ms=3, lw=0.6, label=name)
        values.append(np.concatenate([observed, predicted]))
    finite = np.concatenate(values)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        axis.plot([finite.min(), finite.max()], [finite.min(), finite.max()], color="k", lw=0.8)
    axis.set_xlabel("input value")
    axis.set_ylabel("predicted from the predicted labels")
    axis.set_title(f"{len(given)} inputs ({', '.join(given[:3])}{', ...' if len(given) > 3 else ''})")
    axis.legend(fontsize=7)
    return _figure_image(figure)


def spectrum_plot(predictor: AstroPredictor, teff: float, logg: float, m_h: float, ebv: float) -> Image.Image:
    """The XP spectrum (G-normalised) generated from the labels, with its 1-sigma band."""
    logebv = float(np.log(max(float(ebv), np.exp(LOGEBV_FLOOR))))
    spectra, _ = generate_spectra(predictor, {"teff": [teff], "logg": [logg], "m_h": [m_h], "logebv": [logebv]})
    figure, (axis,) = new_figure(width=7.0, height=4.0)
    flux, sigma = spectra.flux[0], spectra.flux_sigma[0]
    axis.plot(spectra.wavelength, flux, lw=1.2, color="C0")
    axis.fill_between(spectra.wavelength, flux - sigma, flux + sigma, color="C0", alpha=0.3, lw=0, label="1 sigma")
    axis.set_xlabel("wavelength [nm]")
    axis.set_ylabel(f"flux [{spectra.unit}]")
    axis.set_title(f"Teff {teff:.0f} K, log g {logg:.2f}, [M/H] {m_h:+.2f}, E(B-V) {ebv:.3f}", fontsize=9)
    axis.legend(fontsize=8)
    return _figure_image(figure)


def _band_only(coefficients: pd.DataFrame, band: str) -> pd.DataFrame:
    """The 110 coefficient columns (+ sigmas) with only ``band``'s kept, the other band zero: its sampled flux."""
    columns = {}
    for name in XP_NAMES:
        keep = name in BANDS[band]
        for column in (name, f"{name}_sigma"):
            values = coefficients[column].to_numpy(np.float64) if column in coefficients else None
            columns[column] = values if keep and values is not None else np.zeros(len(coefficients))
    return pd.DataFrame(columns)


def inpainting_plot(predictor: AstroPredictor, stars: pd.DataFrame, source: str) -> tuple[Image.Image, str]:
    """The other band predicted from ``source`` ("bp" or "rp"), sampled, against the observed one; and a summary."""
    target = "rp" if source == "bp" else "bp"
    if not np.isfinite(stars[list(BANDS[source])].to_numpy(np.float64)).any(axis=1).all():
        raise DemoInputError(f"Some stars of the file have no {source.upper()} solution: inpaint from the other band.")
    predicted = inpaint_band(predictor, stars, source=source)
    observed = stars.rename(columns={f"{name}_err": f"{name}_sigma" for name in XP_NAMES})
    model, data = sample_xp(_band_only(predicted, target)), sample_xp(_band_only(observed, target))
    figure, (axis,) = new_figure(width=7.0, height=4.0)
    lines = []
    for row in range(len(stars)):
        name = str(stars["source_id"].iloc[row]) if "source_id" in stars else f"star {row}"
        (line,) = axis.plot(model.wavelength, model.flux[row], lw=1.2, label=f"{name} inpainted")
        axis.fill_between(
            model.wavelength,
            model.flux[row] - model.flux_sigma[row],
            model.flux[row] + model.flux_sigma[row],
            color=line.get_color(),
            alpha=0.25,
            lw=0,
        )
        if np.isfinite(stars[list(BANDS[target])].to_numpy(np.float64)[row]).any():
            axis.plot(data.wavelength, data.flux[row], color=line.get_color(), ls="--", lw=1, label=f"{name} observed")
            inside = np.abs(data.flux[row]) > 0.05 * np.nanmax(np.abs(data.flux[row]))
            difference = np.nanmedian(np.abs(model.flux[row] - data.flux[row])[inside] / np.abs(data.flux[row][inside]))
            lines.append(f"- {name}: median relative difference {difference:.3f} where the band is bright")
        else:
            lines.append(f"- {name}: no observed {target.upper()} band to compare with")
    axis.set_xlabel("wavelength [nm]")
    axis.set_ylabel(f"{target.upper()} flux [{model.unit}]")
    axis.set_title(f"{source.upper()} -> {target.upper()}")
    axis.legend(fontsize=7)
    return _figure_image(figure), f"**{source.upper()} -> {target.upper()}** for {len(stars)} star(s):\n" + "\n".join(
        lines
    )


def loci_plot(
    predictor: AstroPredictor, metallicities: Sequence[str], logg_min: float, logg_max: float, points: int
) -> Image.Image:
    """Kiel diagram and BP-RP vs Teff of the stellar loci at the chosen [M/H], from `stellar_loci`."""
    if not metallicities:
        raise DemoInputError("Choose at least one [M/H] for the loci.")
    if logg_min >= logg_max:
        raise DemoInputError(f"The log g range is empty ({logg_min} to {logg_max}): make the minimum smaller.")
    loci = stellar_loci(predictor, np.linspace(logg_min, logg_max, int(points)), [float(m) for m in metallicities])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "loci.png"
        plot_loci(loci, path)
        return Image.open(path).convert("RGB")


def _message(error: Exception, path: str | None = None) -> str:
    """A readable one-paragraph message for the page (the upload's temporary path replaced by its file name)."""
    text = str(error)
    if path:
        text = text.replace(str(path), Path(path).name)
    return f"**Could not use this input.** {text}"


def build_demo(predictor: AstroPredictor, model_name: str = "") -> gr.Blocks:
    """The Gradio Blocks app of ``predictor`` (four tabs); ``model_name`` is shown in the header."""
    known = predictor.tokenizer.observation_names
    usable_errors = (DemoInputError, DatasetBuildError, ObservationNameError, ValueError, KeyError, OSError)

    def on_labels(upload: str | None, g_mag: str, text: str):
        try:
            if upload:
                stars, inputs = xp_file_stars(upload, parse_g_mag(g_mag)), SPECTRA_INPUTS
                where = Path(upload).name
            else:
                stars = parse_observations(text, known)
                inputs, where = [name for name in stars.columns if name in known], "the pasted table"
            table = label_table(predictor, stars, inputs)
            plot = predicted_vs_input_plot(predictor, stars, inputs, table)
        except usable_errors as error:
            return None, None, _message(error, upload)
        return table, plot, f"Predicted {len(table)} star(s) from {where}."

    def on_spectrum(teff: float, logg: float, m_h: float, ebv: float):
        return spectrum_plot(predictor, teff, logg, m_h, ebv)

    def on_inpaint(upload: str | None, g_mag: str, source: str):
        try:
            if not upload:
                raise DemoInputError("Upload a Gaia XP_CONTINUOUS file first.")
            return inpainting_plot(predictor, xp_file_stars(upload, parse_g_mag(g_mag)), source.lower()[:2])
        except usable_errors as error:
            return None, _message(error, upload)

    def on_loci(metallicities, logg_min: float, logg_max: float, points: float):
        try:
            return loci_plot(predictor, metallicities, logg_min, logg_max, int(points)), ""
        except usable_errors as error:
            return None, _message(error)

    with gr.Blocks(title="Astro foundation model") as demo:
        gr.Markdown(
            "# A transformer foundation model for stars\n"
            f"Leung & Bovy (2024), model `{model_name}`. Any subset of Gaia XP coefficients, colours and labels "
            "in, any observation out, with its uncertainty."
        )
        with gr.Tab("Spectra -> labels"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Gaia XP_CONTINUOUS file (csv, ecsv, fits, votable)", elem_id="xp-file")
                    g_mag = gr.Textbox(
                        label="G magnitude (for files without phot_g_mean_mag)",
                        placeholder="e.g. 15.2",
                        elem_id="g-mag",
                    )
                    text = gr.Textbox(
                        label="... or type / paste stars (CSV: observation names, one star per line)",
                        value=EXAMPLE_COLOURS,
                        lines=4,
                        elem_id="colours",
                    )
                    predict = gr.Button("Predict labels", elem_id="predict", variant="primary")
                with gr.Column():
                    status = gr.Markdown(elem_id="labels-status")
                    table = gr.Dataframe(label="Predicted labels (sigma = 1-sigma)", elem_id="labels-table")
                    plot = gr.Image(label="Input vs predicted from the labels", elem_id="labels-plot", format="png")
            predict.click(on_labels, [upload, g_mag, text], [table, plot, status])
        with gr.Tab("Labels -> spectrum"):
            with gr.Row():
                with gr.Column():
                    teff = gr.Slider(3500, 7500, value=5000, step=10, label="Teff [K]", elem_id="teff")
                    logg = gr.Slider(0.0, 5.5, value=3.0, step=0.05, label="log g [dex]", elem_id="logg")
                    m_h = gr.Slider(-2.5, 0.5, value=0.0, step=0.05, label="[M/H] [dex]", elem_id="m_h")
                    ebv = gr.Slider(0.001, 1.0, value=0.05, step=0.001, label="E(B-V) [mag]", elem_id="ebv")
                spectrum = gr.Image(label="Generated XP spectrum, 1-sigma band", elem_id="spectrum-plot", format="png")
            sliders = [teff, logg, m_h, ebv]
            for slider in sliders:
                slider.change(on_spectrum, sliders, spectrum, trigger_mode="always_last")
            demo.load(on_spectrum, sliders, spectrum)
        with gr.Tab("Inpainting"):
            with gr.Row():
                with gr.Column():
                    inpaint_file = gr.File(label="Gaia XP_CONTINUOUS file", elem_id="inpaint-file")
                    inpaint_g = gr.Textbox(
                        label="G magnitude (for files without phot_g_mean_mag)", placeholder="e.g. 15.2"
                    )
                    source = gr.Radio(["BP -> RP", "RP -> BP"], value="BP -> RP", label="Predict")
                    inpaint = gr.Button("Inpaint", elem_id="inpaint", variant="primary")
                with gr.Column():
                    inpaint_status = gr.Markdown(elem_id="inpaint-status")
                    inpaint_image = gr.Image(
                        label="Observed (dashed) and inpainted band", elem_id="inpaint-plot", format="png"
                    )
            inpaint.click(on_inpaint, [inpaint_file, inpaint_g, source], [inpaint_image, inpaint_status])
        with gr.Tab("Stellar loci"):
            with gr.Row():
                with gr.Column():
                    metallicities = gr.CheckboxGroup(
                        ["-1.5", "-1.0", "-0.5", "0.0", "0.25"], value=["-1.0", "0.0"], label="[M/H] [dex]"
                    )
                    logg_min = gr.Slider(0.0, 5.5, value=1.0, step=0.1, label="lowest log g")
                    logg_max = gr.Slider(0.0, 5.5, value=4.8, step=0.1, label="highest log g")
                    points = gr.Slider(3, 40, value=15, step=1, label="points per locus")
                    loci_button = gr.Button("Compute loci", elem_id="loci", variant="primary")
                with gr.Column():
                    loci_status = gr.Markdown(elem_id="loci-status")
                    loci_image = gr.Image(label="Stellar loci", elem_id="loci-plot", format="png")
            loci_button.click(on_loci, [metallicities, logg_min, logg_max, points], [loci_image, loci_status])
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: load the checkpoint and serve the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=os.environ.get(MODEL_ENV), help=f"checkpoint folder or Hub repo id (default: ${MODEL_ENV})"
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, $GRADIO_SERVER_PORT)")
    parser.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"name the model: --model <checkpoint folder or Hub repo id>, or set ${MODEL_ENV}.")
    predictor = AstroPredictor.from_pretrained(args.model, device=args.device)
    build_demo(predictor, args.model).launch(server_name=args.host, server_port=args.port, show_error=False)


if __name__ == "__main__":
    sys.exit(main())
