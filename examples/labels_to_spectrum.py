"""Labels -> XP spectrum: Gaia XP spectra generated from Teff, log g, [M/H] and E(B-V), with sigma bands.

    PYTHONPATH=. python examples/labels_to_spectrum.py --model CHECKPOINT --out spectra.png [--absolute]

Generates a Teff sequence at fixed log g, [M/H] and E(B-V); the last line (JSON) gives each star's
blue/red flux ratio (mean flux 400-500 nm over 700-900 nm): hotter stars should be bluer.
"""

import numpy as np
from _common import load_predictor, parser, report

from modeling_astro.tasks import generate_spectra, plot_spectra


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--teff", type=float, nargs="+", default=[4200.0, 4700.0, 5200.0])
    arguments.add_argument("--logg", type=float, default=2.5)
    arguments.add_argument("--m-h", type=float, default=0.0)
    arguments.add_argument("--ebv", type=float, default=0.05)
    arguments.add_argument("--absolute", action="store_true", help="absolute flux at 10 pc via g_fakemag")
    args = arguments.parse_args()
    predictor = load_predictor(args)
    n = len(args.teff)
    labels = {
        "teff": np.asarray(args.teff),
        "logg": np.full(n, args.logg),
        "m_h": np.full(n, args.m_h),
        "logebv": np.full(n, np.log(args.ebv)),
    }
    spectra, _ = generate_spectra(predictor, labels, absolute=args.absolute)
    ratio = spectra.mean_flux(400.0, 500.0) / spectra.mean_flux(700.0, 900.0)
    if args.out:
        names = [f"Teff {t:.0f} K" for t in args.teff]
        title = f"log g {args.logg}, [M/H] {args.m_h}, E(B-V) {args.ebv}"
        plot_spectra(spectra, args.out, names=names, title=title)
    order = np.argsort(args.teff)
    report(
        {
            "task": "labels_to_spectrum",
            "teff": list(args.teff),
            "blue_red_flux_ratio": [round(float(r), 4) for r in ratio],
            "hotter_is_bluer": bool(np.all(np.diff(ratio[order]) > 0)),
        }
    )


if __name__ == "__main__":
    main()
