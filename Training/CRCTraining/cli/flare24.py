"""``crcseg flare24-ablation``: FLARE24's Table 4 loss ablation (``CRCTraining.flare24.ablation``)."""
from __future__ import annotations

from pathlib import Path

from CRCTraining.cli.arguments import add_device_argument
from CRCTraining.flare24.ablation import format_table, run_ablation


def add_ablation_command(commands) -> None:
    ablation = commands.add_parser("flare24-ablation", help="FLARE24 Table 4: tumor-only labels vs organ interference, "
                                   "same data and schedule; Dice, NSD and false-positive volume on tumor-free cases")
    ablation.add_argument("train_source", type=Path, help="training cases (MSD layout) with organ maps")
    ablation.add_argument("test_source", type=Path, help="test cases (MSD layout); empty labels = tumor-free cases")
    ablation.add_argument("-o", "--output", type=Path, required=True, help="work, bundles, predictions, ablation.csv")
    ablation.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net ids: this one and the next")
    ablation.add_argument("--organs", type=Path, required=True, help="organ label maps <case>.nii.gz of the training cases")
    ablation.add_argument("--test-organs", type=Path, required=True, help="organ label maps of the test cases")
    ablation.add_argument("--convention", default="totalsegmentator", help="label convention of the organ maps")
    ablation.add_argument("--epochs", type=int, default=100)
    ablation.add_argument("--iterations", type=int, help="iterations per epoch (default: nnU-Net's 250)")
    ablation.add_argument("--val-iterations", type=int)
    ablation.add_argument("--warmup-epochs", type=int, help="organ-interference loss warm-up: epochs over which "
                          "the class-weighted loss's share rises from 0 to 1 (default: the public code's 50)")
    add_device_argument(ablation)
    ablation.add_argument("--gpu-memory-gb", type=float, help="nnU-Net's VRAM target (smaller: smaller patches)")
    ablation.add_argument("--processes", type=int, default=2)
    ablation.add_argument("--preset", choices=("default", "fast"), default="default",
                          help="inference settings of both arms on the test cases (fast: FLARE24's)")
    ablation.set_defaults(run=ablation_main)


def ablation_main(args) -> int:
    results = run_ablation(args.train_source, args.test_source, args.output, args.dataset_id, args.organs,
                           args.test_organs, args.convention, args.epochs, args.iterations, args.val_iterations,
                           args.device, args.gpu_memory_gb, args.processes, args.preset, args.warmup_epochs)
    print(format_table(results))
    for result in results:
        print(f"{result.arm}: {result.trainer}, {result.loss}")
    print(f"written: {args.output / 'ablation.csv'}, {args.output / 'ablation.json'}")
    return 0
