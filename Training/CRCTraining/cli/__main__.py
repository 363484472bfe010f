"""``python -m CRCTraining.cli`` (what torchrun runs for multi-GPU training)."""
import sys

from CRCTraining.cli import main

sys.exit(main())
