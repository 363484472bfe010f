"""Training throughput (images/s) of the 2D engine: the HCF slice classifier on 1 and on N processes.

Each process count runs the real training path (``hcf.tasks.SliceClassifierTask`` on ``engine2d.train``:
the ``DistributedSampler`` batches, DDP, the optimiser step, checkpoints) on phantom slices held in memory
(``phantom_dataset``; body crop, window and resize to ``--size`` per sample, augmentation on). One
process is a plain ``python``; N > 1 are ``torchrun --standalone --nproc_per_node N`` (gloo on the CPU,
NCCL on GPUs), ``--batch-size`` being the global batch. Throughput = timed iterations x batch / their
seconds: every count trains ``--warmup`` iterations and then ``--warmup + --iterations`` in a fresh run,
and the difference of the two wall times times only the extra iterations (start-up, the process group,
the data and the final files cancel out).

    .venv/bin/python benchmarks/bench_engine2d.py [--size 128] [--batch-size 8] [--iterations 10]
        [--processes 1 2] [--threads N] [--device cpu|cuda] [--amp] [--json OUT.json]

CPU: each process gets ``--threads`` threads (default: the cores divided by the process count).
CUDA: one GPU per process; ``--amp`` trains with float16 autocast + GradScaler (the engine's AMP).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

MARK = "ENGINE2D_BENCH "


def worker(args: argparse.Namespace) -> int:
    """One process count's measurement (every rank runs this; rank 0 prints the figures)."""
    import torch

    from CRCTraining.data.phantoms_ct import make_phantom_case
    from CRCTraining.engine2d import distributed_context, train
    from CRCTraining.hcf.settings import HCFTrainingSettings
    from CRCTraining.hcf.slices import SliceDataset
    from CRCTraining.hcf.tasks import SliceClassifierTask
    from CRCTraining.hcf.train import engine_settings

    cases = {f"case{k}": make_phantom_case(k, seed=0) for k in range(2)}
    settings_base = dict(fold=None, size=args.size, batch_size=args.batch_size, ratio="n", seed=0, device=args.device,
                         threads=args.threads, amp="on" if args.amp else "auto", checkpoint_every=10**6)
    data = SliceDataset({name: (c.ct.array, c.tumor.array) for name, c in cases.items()},
                        HCFTrainingSettings(output=Path("."), size=args.size).slice_config())
    seconds: List[float] = []
    context = distributed_context(args.device, args.threads)  # one process group for both runs
    work = Path(args.work)  # the same folder on every rank: rank 0 writes the runs' files
    for count in (args.warmup, args.warmup + args.iterations):
        settings = HCFTrainingSettings(output=work / f"run_{count}", iterations=count, **settings_base)
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train(SliceClassifierTask(settings, data), engine_settings(settings, "classifier"), progress=False,
              context=context)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    if context.is_main:
        timed = max(seconds[1] - seconds[0], 1e-9)
        print(MARK + json.dumps({"processes": context.world_size, "threads": torch.get_num_threads(),
                                 "device": args.device, "amp": bool(args.amp), "size": args.size,
                                 "batch_size": args.batch_size,
                                 "iterations": args.iterations, "seconds": timed,
                                 "seconds_per_iteration": timed / args.iterations,
                                 "images_per_s": args.iterations * args.batch_size / timed}), flush=True)
    context.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="slice input (default 128; the paper's is 512)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (default 8)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations of the reference run (default 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--threads", type=int, help="per process (default: cores / processes)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.amp and args.device != "cuda":
        parser.error("--amp needs --device cuda")
    results: List[Dict[str, object]] = []
    for processes in args.processes:
        threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
        work = tempfile.mkdtemp(prefix="bench_engine2d_")
        options = [__file__, "--worker", "--work", work, "--size", str(args.size), "--batch-size", str(args.batch_size),
                   "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--threads", str(threads),
                   "--device", args.device] + (["--amp"] if args.amp else [])
        launcher = [sys.executable] if processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        done = subprocess.run(launcher + options, capture_output=True, text=True)
        shutil.rmtree(work, ignore_errors=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
        if done.returncode != 0 or not lines:
            print(done.stdout[-2000:] + done.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len(MARK):]))
    base = float(results[0]["images_per_s"])
    print(f"2D engine training throughput: HCF slice classifier, {args.size} x {args.size}, global batch "
          f"{args.batch_size}, {args.device}{' + AMP' if args.amp else ''}, {args.iterations} timed iterations")
    print(f"  {'processes':>9} {'threads':>7} {'s/iteration':>12} {'images/s':>9} {'vs first':>8}")
    for result in results:
        print(f"  {result['processes']:>9} {result['threads']:>7} {result['seconds_per_iteration']:>12.3f} "
              f"{result['images_per_s']:>9.1f} {float(result['images_per_s']) / base:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
