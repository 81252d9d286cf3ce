"""Extinction curve: A(lambda)/E(B-V) from spectra the model generates at several E(B-V), against the law.

    PYTHONPATH=. python examples/extinction_curve.py --model CHECKPOINT --out extinction.png

The simulated survey reddens every star with the Gordon et al. (2023) law at R_V ~ N(3.1, 0.2); the last line
(JSON) is the largest relative error of the recovered curve against that law at ``--rv`` over 400-1000 nm: the
curve's shape comes from the generated spectra and its level from A(550 nm) = R_V E(B-V), and, second figure,
with the level taken from the model's generated g_fakemag as well.
"""

from _common import load_predictor, parser, report

from modeling_astro.tasks import (
    DEFAULT_EBV,
    extinction_curve,
    injected_law,
    max_relative_error,
    plot_extinction_curve,
)


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--rv", type=float, default=3.1, help="R_V of the law to compare with")
    arguments.add_argument("--ebv", type=float, nargs="+", default=list(DEFAULT_EBV))
    args = arguments.parse_args()
    predictor = load_predictor(args)
    curve = extinction_curve(predictor, ebv=args.ebv, rv=args.rv)  # the shape from the model, A(V) = R_V E(B-V)
    free = extinction_curve(predictor, ebv=args.ebv)  # the level from the model's g_fakemag too
    law = injected_law(curve.wavelength, rv=args.rv)
    if args.out:
        plot_extinction_curve(curve, law, args.out, law_label=f"injected law (G23, R_V = {args.rv})")
    report(
        {
            "task": "extinction_curve",
            "rv": args.rv,
            "max_rel_error_400_1000nm": round(max_relative_error(curve, law, 400.0, 1000.0), 4),
            "max_rel_error_400_1000nm_level_from_g_fakemag": round(max_relative_error(free, law, 400.0, 1000.0), 4),
        }
    )

if __name__ == "__main__":
    main()
