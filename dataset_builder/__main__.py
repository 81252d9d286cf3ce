"""Command line: ``python -m dataset_builder build ...`` and ``python -m dataset_builder simulate ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_astro.io_utils import DiskFullError, FolderInUseError

from .build import build_dataset
from .errors import DatasetBuildError


def _build(args: argparse.Namespace) -> None:
    summary = build_dataset(
        gaia_xp=args.gaia_xp,
        gaia_source=args.gaia_source,
        allstar=args.allstar,
        out_dir=args.out,
        extra=args.extra,
        ebv=args.ebv,
        split_fractions=tuple(args.split_fractions),
        rows_per_shard=args.rows_per_shard,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
    )
    print(summary.table())


def _simulate(args: argparse.Namespace) -> None:
    from .simulate import simulate_survey  # written separately; imported only when asked for

    simulate_survey(
        out_dir=args.out, n_stars=args.n_stars, seed=args.seed, xp_model=args.xp_model, calibrated=not args.uncalibrated
    )


def make_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``build`` and ``simulate`` subcommands."""
    parser = argparse.ArgumentParser(prog="python -m dataset_builder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the parquet dataset folder from survey files")
    build.add_argument("--gaia-xp", nargs="+", type=Path, required=True, help="XP_CONTINUOUS file(s)")
    build.add_argument("--gaia-source", type=Path, required=True, help="gaia_source + 2MASS photometry table")
    build.add_argument("--allstar", type=Path, default=None, help="APOGEE DR17 allStar FITS")
    build.add_argument("--ebv", type=Path, default=None, help="table of source_id, ebv (, ebv_err)")
    build.add_argument("--extra", nargs="*", type=Path, default=[], help="true_* tables")
    build.add_argument("--out", type=Path, required=True, help="output dataset folder")
    build.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    build.add_argument("--split-fractions", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar="F")
    build.add_argument("--rows-per-shard", type=int, default=50_000)
    build.add_argument("--num-proc", type=int, default=2)
    build.set_defaults(handler=_build)

    simulate = commands.add_parser("simulate", help="write a simulated survey in the archives' formats")
    simulate.add_argument("--out", type=Path, required=True, help="output folder for the simulated files")
    simulate.add_argument("--n-stars", type=int, default=50_000)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--xp-model",
        choices=("ridge", "hermite"),
        default="ridge",
        help="ridge: simulator v1 (the default dataset); hermite: the instrument forward model calibrated to real DR3",
    )
    simulate.add_argument("--uncalibrated", action="store_true", help="hermite without the calibration to real DR3")
    simulate.set_defaults(handler=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with a one-line message for bad inputs)."""
    args = make_parser().parse_args(argv)
    try:
        args.handler(args)
    except (DatasetBuildError, FolderInUseError, DiskFullError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
