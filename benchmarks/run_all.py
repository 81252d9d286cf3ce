"""Run every `benchmarks/bench_*.py` script (found by glob, so scripts added later are included), one after
the other, each in its own process, and print their JSON results: one line per benchmark, then one JSON line
with all of them.

Run: ``python benchmarks/run_all.py [--only xp_to_labels training ...] [--skip build ...]``
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cpu_description  # noqa: E402


def discover() -> dict[str, Path]:
    """Benchmark name (file stem without `bench_`) -> script path, sorted by name."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(HERE.glob("bench_*.py"))}


def run(script: Path) -> dict:
    """Run one benchmark script; its last stdout line is its JSON result (an error record if it failed)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
    seconds = round(time.perf_counter() - start, 1)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"benchmark": script.stem, "error": result.stderr[-2000:], "script_wall_s": seconds}
    try:
        # script_wall_s, not wall_s: a benchmark's own wall_s (e.g. per run) is kept
        return {**json.loads(lines[-1]), "script_wall_s": seconds, "cpu": cpu_description()}
    except json.JSONDecodeError:
        return {
            "benchmark": script.stem,
            "error": f"last line is not JSON: {lines[-1][:200]}",
            "script_wall_s": seconds,
        }


def main() -> None:
    scripts = discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(scripts), help="run only these benchmarks")
    parser.add_argument(
        "--skip", nargs="+", choices=sorted(scripts), default=[], help="benchmarks to leave out"
    )
    args = parser.parse_args()
    names = [name for name in (args.only or scripts) if name not in args.skip]
    results = []
    for name in names:
        print(f"running {scripts[name].name} ...", file=sys.stderr, flush=True)
        results.append(run(scripts[name]))
        print(json.dumps(results[-1]), flush=True)
    failed = [r["benchmark"] for r in results if "error" in r]
    print(json.dumps({"benchmark": "run_all", "cpu": cpu_description(), "results": results, "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
