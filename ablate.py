"""Ablations of multi-layers trainable pooling: `python ablate.py --help` (the same command as `poolattn-ablate`)."""

import sys

from poolattn.cli import ablate

if __name__ == "__main__":
    sys.exit(ablate())
