"""Score models on MTEB and compare them: `python evaluate.py --help` (the same command as `poolattn-evaluate`)."""

import sys

from poolattn.cli import evaluate

if __name__ == "__main__":
    sys.exit(evaluate())
