"""Stellar loci: Teff and colours over a (log g, [M/H]) grid at zero extinction; Kiel diagram plot.

    PYTHONPATH=. python examples/stellar_loci.py --model CHECKPOINT --out loci.png

The last line (JSON) gives the giant-branch slopes dTeff/d[M/H] and dTeff/dlog g measured on the grid at
log g 2.5 and [M/H] 0 (the simulated survey's red giant branch has -280 K/dex and +330 K/dex).
"""

import numpy as np
from _common import load_predictor, parser, report

from modeling_astro.tasks import plot_loci, stellar_loci


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--logg", type=float, nargs=3, default=[1.0, 3.5, 11], metavar=("MIN", "MAX", "N"))
    arguments.add_argument("--m-h", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.3])
    args = arguments.parse_args()
    predictor = load_predictor(args)
    logg = np.linspace(args.logg[0], args.logg[1], int(args.logg[2]))
    loci = stellar_loci(predictor, logg, args.m_h)
    if args.out:
        plot_loci(loci, args.out)
    slopes = stellar_loci(predictor, [2.25, 2.5, 2.75], [-0.25, 0.0, 0.25]).set_index(["logg", "m_h"])["teff"]
    report(
        {
            "task": "stellar_loci",
            "teff_range_K": [round(float(loci["teff"].min()), 1), round(float(loci["teff"].max()), 1)],
            "dteff_dm_h_at_logg_2.5_K_per_dex": round(
                float((slopes[2.5, 0.25] - slopes[2.5, -0.25]) / 0.5), 1
            ),
            "dteff_dlogg_at_m_h_0_K_per_dex": round(float((slopes[2.75, 0.0] - slopes[2.25, 0.0]) / 0.5), 1),
        }
    )


if __name__ == "__main__":
    main()
