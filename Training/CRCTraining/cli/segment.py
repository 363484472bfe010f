"""``crcseg segment``: tumor segmentation of CT/MR files or folders with a trained model (``CRCSegmentationLib.batch``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCSegmentationLib.batch import OUTPUT_TYPES, segment_files
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from CRCTraining.cli.arguments import add_device_argument, add_shard_argument, shard_from_arguments


# --- command line: ``crcseg segment`` ------------------------------------------------------------
def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a CT file or a folder of CT files (NIfTI, NRRD, MHA), a DICOM series "
                        "folder, a folder of series folders or a zip of them (one case per series, named "
                        "<PatientID>_<StudyDate>_s<SeriesNumber>); MR images for an MR model (RCSegNeXt)")
    parser.add_argument("-m", "--model", required=True,
                        help="a model bundle, an nnU-Net results folder, or a catalogue name (e.g. demo_phantom)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for <case>_tumor.nii.gz and summary.csv (and <case>_labels.nii.gz, "
                        "every label of the model, when it segments organs too: the rectum of an MR model)")
    parser.add_argument("--organs", type=Path, default=None,
                        help="folder of organ label maps <case>.nii.gz, or one label map for one CT "
                             "(default: run TotalSegmentator)")
    parser.add_argument("--convention", default="totalsegmentator",
                        help="label convention of --organs: totalsegmentator, word or a JSON mapping file")
    parser.add_argument("--references", type=Path, default=None,
                        help="folder of tumor references <case>.nii.gz (or one file for one CT): adds Dice, NSD, "
                             "precision, recall, HD95")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier result in the output folder whole, once this run is complete "
                             "(default: a rerun skips the cases an earlier run finished with the same inputs, model "
                             "and settings, and refuses results made otherwise)")
    add_device_argument(parser)
    parser.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring (about 8x faster)")
    parser.add_argument("--preset", choices=("default", "fast"), default="default",
                        help="fast: FLARE24's inference settings, tile step 7/8 of the patch and no mirroring")
    parser.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all available)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file name (default: checkpoint_final.pth)")
    parser.add_argument("--min-component-ml", type=float, default=0.0, help="remove tumor components smaller than this")
    parser.add_argument("--slice-filter", default=None, metavar="MODEL",
                        help="an HCF bundle or classifier-only bundle (folder or catalogue name): its slice classifier "
                             "clears the tumor on the axial slices it calls normal (false-positive filter, any model)")
    parser.add_argument("--exact-tiles", action="store_true",
                        help="run every full-volume tile touching the OOI box: inside it, exactly nnU-Net's "
                             "full-volume result (default: skip tiles weighing < 5 %% of their peak on the OOI)")
    parser.add_argument("--output-type", nargs="+", choices=OUTPUT_TYPES, default=["nifti"], metavar="TYPE",
                        help="what to write besides summary.csv, several at once: nifti (<case>_tumor.nii.gz, always "
                             "written: a rerun checks it), dicom-seg (<case>_seg.dcm), rtstruct (<case>_rtstruct.dcm, "
                             "the tumor as GTV), sr (<case>_sr.dcm, TID 1500 measurements); the DICOM ones need a "
                             "DICOM input and reference its series (default: nifti)")
    add_shard_argument(parser)


def segment_main(args: argparse.Namespace) -> int:
    shard = shard_from_arguments(args)  # a bad --shard fails before the model loads
    model = open_model(args.model, folds=args.folds, checkpoint=args.checkpoint)  # a folder or a catalogue name
    chosen = {"device": args.device, "min_component_ml": args.min_component_ml,
              "min_tile_weight": 0.0 if args.exact_tiles else SegmentationParameters.min_tile_weight}
    if args.no_mirroring:
        chosen["mirroring"] = False
    parameters = SegmentationParameters.for_preset(args.preset, **chosen)
    report = segment_files(args.input, model, args.output, organs=args.organs, references=args.references,
                           parameters=parameters, convention=args.convention, overwrite=args.overwrite,
                           slice_filter=args.slice_filter, output_types=args.output_type, shard=shard)
    print(report.summary())
    return 0 if not report.failed else 1
