"""`python mine.py` / `poolattn-mine`: hard negatives mined with a model, written as a training folder."""

import argparse
import json
import sys
from pathlib import Path

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from ..training import mining
from .common import show_progress, storage_errors_in_one_line


def mine_parser() -> argparse.ArgumentParser:
    defaults = mining.MiningSettings()
    parser = argparse.ArgumentParser(description=mining.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data", required=True, help="(query, positive[, negative]) file, folder or Hub id")
    parser.add_argument("--model", required=True, help="poolattn folder, or sentence-transformers folder or Hub id")
    parser.add_argument("--output", required=True, help="new folder: one JSONL per source, and _provenance.json")
    parser.add_argument(
        "--num_negatives",
        type=int,
        default=defaults.num_negatives,
        help="negatives per query in all, given ones first; a row given more keeps them all (default %(default)s)",
    )
    parser.add_argument(
        "--range_min", type=int, default=defaults.range_min, help="skip the N nearest candidates (default %(default)s)"
    )
    parser.add_argument(
        "--range_max",
        type=int,
        default=defaults.range_max,
        help="take negatives among the N nearest candidates only (default %(default)s)",
    )
    parser.add_argument(
        "--absolute_margin",
        type=float,
        default=defaults.absolute_margin,
        help="keep candidates with sim <= sim(positive) - M (default: off)",
    )
    parser.add_argument(
        "--relative_margin",
        type=float,
        default=defaults.relative_margin,
        help="keep candidates with sim <= sim(positive) x (1 - R) (default %(default)s; "
        "a negative value turns it off)",
    )
    parser.add_argument("--replace_given", action="store_true", help="drop the rows' given negatives")
    parser.add_argument("--query_instruction", help="query instruction for a poolattn model (Instruct: ...)")
    parser.add_argument(
        "--source_instructions",
        help="JSON object of query instructions per source (file stem or source name) for a poolattn model, as "
        "train.py's flag; a row's own `instruction` wins, --query_instruction is the fallback",
    )
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--skip_invalid_rows",
        action="store_true",
        help="skip (and count) rows that fail validation instead of stopping; they are left out of the output",
    )
    parser.add_argument("--data_split", default=defaults.data_split, help="split of a Hub dataset (default: train)")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let the model folder run its own code (a sentence-transformers model's, or a "
        "tokenizer's auto_map); poolattn folders never need it",
    )
    return parser


def _json_object(flag: str, value: str | None) -> dict | None:
    """A flag's JSON object (None when not given); anything else ends the command with what was wrong."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        sys.exit(f"mine: {flag} {value!r} is not valid JSON ({error.msg} at character {error.pos}).")
    if not isinstance(parsed, dict):
        sys.exit(f'mine: {flag} must be a JSON object, e.g. \'{{"snli_triplets": "Retrieve ..."}}\'; got {value!r}.')
    return parsed


@storage_errors_in_one_line("mine")
def mine(argv: list[str] | None = None) -> int:
    """`python mine.py --train_data DATA --model MODEL --output DIR [...]` / `poolattn-mine ...`."""
    args = mine_parser().parse_args(sys.argv[1:] if argv is None else argv)
    show_progress()
    settings = mining.MiningSettings(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin if args.relative_margin is None or args.relative_margin >= 0 else None,
        replace_given=args.replace_given,
        query_instruction=args.query_instruction,
        source_instructions=_json_object("--source_instructions", args.source_instructions),
        batch_size=args.batch_size,
        skip_invalid_rows=args.skip_invalid_rows,
        data_split=args.data_split,
    )
    try:
        run = mining.mine_hard_negatives(
            args.train_data,
            args.model,
            output=args.output,
            settings=settings,
            trust_remote_code=args.trust_remote_code,
        )
    except ValueError as error:  # MiningError, TripletDataError
        sys.exit(f"mine: {error}")
    for source in run.sources:
        print(
            f"{source.name}: {source.rows} rows, corpus {source.corpus}, {source.mined} negatives mined, "
            f"{source.queries_short} queries short of {settings.num_negatives}, {source.skipped_by_margin} "
            f"candidates inside the margin skipped -> {Path(args.output) / source.output}"
        )
    if run.skipped_rows:
        print(f"{run.skipped_rows} invalid row(s) skipped (--skip_invalid_rows): left out of the output")
    print(f"mined in {run.seconds:.0f} s; provenance: {Path(args.output) / mining.PROVENANCE_FILE}")
    return 0
