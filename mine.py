"""Mine hard negatives for training data: `python mine.py --help` (the same command as `poolattn-mine`)."""

import sys

from poolattn.cli import mine

if __name__ == "__main__":
    sys.exit(mine())
