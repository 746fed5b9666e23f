"""Command line of the classroom grader: see lora_course/grading/__init__.py."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from pathlib import Path

from .grader import Options, grade_folder, merge_csv, report, submissions, write_csv
from .sandbox import sandbox_problem


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected i/n with 1 <= i <= n, got {text!r}")
    return int(match[1]), int(match[2])


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 4G or 512M, got {text!r}")
    return int(float(match[1]) * 1024 ** " KMG".index(match[2].upper() or " "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lora_course.grading", description="Grade a folder of exercise notebooks."
    )
    parser.add_argument("submissions", type=Path, nargs="?", help="folder of submitted .ipynb")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="at once (default: cores)"
    )
    parser.add_argument("--shard", type=_shard, default=(1, 1), help="grade the i-th of n slices")
    parser.add_argument(
        "--seed", type=int, help="seed of the instructor-only cases (default: random)"
    )
    parser.add_argument(
        "--cell-timeout", type=int, default=60, help="seconds per cell (default 60)"
    )
    parser.add_argument("--memory-limit", type=_size, default=4 * 2**30, help="per submission (4G)")
    parser.add_argument("--no-sandbox", action="store_true", help="run without bubblewrap (unsafe)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="CSV", help="combine shard CSVs")
    args = parser.parse_args(argv)

    if args.merge:
        count = merge_csv(args.merge, args.out)
        print(f"{count} submissions from {len(args.merge)} files: {args.out}")
        return 0
    if args.submissions is None or not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder of submissions")
    if not args.no_sandbox and (problem := sandbox_problem()):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    options = Options(
        args.cell_timeout, args.memory_limit, seed=seed, use_sandbox=not args.no_sandbox
    )
    from tqdm.auto import tqdm

    total = len(submissions(args.submissions, args.shard))
    start = time.perf_counter()
    with tqdm(total=total, desc="submissions", unit="nb") as progress:
        grades = grade_folder(args.submissions, options, args.jobs, args.shard, progress)
    minutes = (time.perf_counter() - start) / 60
    write_csv(grades, args.out)
    text = report(grades)
    args.out.with_suffix(".txt").write_text(f"seed {seed}\n{text}\n")
    print(text)
    rate = f"{len(grades) / minutes:.1f} per minute" if minutes > 0 else ""
    print(f"\n{len(grades)} submissions graded ({rate}, --jobs {args.jobs}, seed {seed}): "
          f"{args.out} and {args.out.with_suffix('.txt')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
