"""Fine-tune and export poolattn embedding models: `python train.py --help` (the same command as `poolattn-train`)."""

import sys

from poolattn.cli import train

if __name__ == "__main__":
    sys.exit(train())
