"""Seed-by-seed comparison of search methods against the default, pooled over result files.

Usage: python bench/paired_seeds.py RESULT.json [RESULT.json ...] [--methods a,b] [--target 0.46]
       [--out bench/results/search_tuning_paired.json]

Each RESULT is a ``bench/search_quality.py`` output; every method in it ran the same seeds. For each
candidate: on how many seeds it reached the target sooner / later than the default, and the exact
sign test's p-value (``bench/curves/paired.py``). How the defaults are chosen
(``bench/curves/README.md``): a candidate replaces the default only when it is sooner on clearly
more seeds (p < 0.05), not when its median curve happens to cross the target first.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves.paired import compare  # noqa: E402  (after the path set-up above)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--reference", default="default")
    parser.add_argument("--methods", help="candidates, comma-separated (default: every other method in the files)")
    parser.add_argument("--target", type=float, help="one target for every file (default: each file's own)")
    parser.add_argument("--out", help="also save the comparison as JSON here")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            parser.error(f"{path}: not a readable search_quality result ({err})")
    names = args.methods.split(",") if args.methods else sorted(
        {m for r in results for m in r["methods"]} - {args.reference})
    rows = [compare(results, name, args.reference, args.target) for name in names]
    print(f"paired against {args.reference} over {', '.join(args.results)}")
    print(f"{'method':28s} {'sooner':>6s} {'later':>6s} {'ties':>5s} {'sign p':>7s}")
    for row in rows:
        print(f"{row['candidate']:28s} {row['sooner']:6d} {row['later']:6d} {row['ties']:5d} {row['sign_test_p']:7.3f}")
    if args.out:
        given = sys.argv[1:] if argv is None else argv
        Path(args.out).write_text(json.dumps({
            "command": "python bench/paired_seeds.py " + shlex.join(given),
            "reference": args.reference, "target": args.target or "each file's random+fifo final median",
            "files": args.results, "methods": rows}, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
