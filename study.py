"""The study (designs x seeds x four categories, in the paper's layout): `python study.py --help` (the same command as
`poolattn-study`)."""

import sys

from poolattn.cli import run_study_command

if __name__ == "__main__":
    sys.exit(run_study_command())
