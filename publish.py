"""Publish trained models to the Hugging Face Hub: `python publish.py --help` (same as `poolattn-publish`)."""

import sys

from poolattn.cli import publish

if __name__ == "__main__":
    sys.exit(publish())
