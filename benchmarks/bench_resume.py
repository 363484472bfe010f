"""How a killed batch resumes: ``crcseg segment`` over N phantom cases, SIGKILLed after case N-1, then rerun.

    .venv/bin/python benchmarks/bench_resume.py [--cases 12] [--model demo_phantom]

Prints the uninterrupted run's time, the rerun's time, what the rerun did (cases redone, cases skipped)
and the cost of skipping a finished case (hashing its inputs and checking its files against its record):
a 500-case batch killed at case 499 redoes one case and checks 499.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from CRCTraining.data.phantoms_ct import make_phantom_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from crcseg_child import run_crcseg  # crcseg in a child process, killed at a chosen point


def complete_records(folder: Path) -> int:
    records = folder / ".crcseg"
    return sum(json.loads(p.read_text()).get("complete", False) for p in records.glob("*.json")) \
        if records.is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--model", default="demo_phantom")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = make_phantom_dataset(root / "source", num_cases=args.cases, seed=3)

        def argv(out: Path):
            return ["segment", str(data / "imagesTr"), "-m", args.model, "-o", str(out), "--organs",
                    str(data / "organsTr"), "--no-mirroring", "--device", "cpu"]

        started = time.perf_counter()
        code, _ = run_crcseg(argv(root / "full"), root)
        full = time.perf_counter() - started
        assert code == 0
        killed = root / "killed"
        code, _ = run_crcseg(argv(killed), root, kill_when=lambda: complete_records(killed) >= args.cases - 1)
        done = complete_records(killed)
        started = time.perf_counter()
        code, output = run_crcseg(argv(killed), root)
        rerun = time.perf_counter() - started
        assert code == 0, output
        started = time.perf_counter()
        code, output = run_crcseg(argv(killed), root)  # everything finished: the rerun only checks
        checks_only = time.perf_counter() - started
        line = next(l for l in output.splitlines() if "cases segmented" in l)
    per_case = full / args.cases
    print(f"uninterrupted run of {args.cases} cases: {full:.1f} s ({per_case:.2f} s per case, start-up included)")
    print(f"killed after {done} finished cases; rerun: {rerun:.1f} s = {rerun / full:.2f} x the uninterrupted run")
    print(f"rerun with every case finished: {checks_only:.1f} s, at most {checks_only / args.cases:.2f} s per "
          f"skipped case, start-up included ({line.strip()})")


if __name__ == "__main__":
    main()
