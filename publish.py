"""Publish trained poolattn models to the Hugging Face Hub, one repository per variant, with generated model cards.

    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/            # dry run: write the five repository folders only
    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/ --push     # then upload them to ORG/poolattn-smollm2-v1 ... -v5

Each folder (`<output_dir>/<NAME>-v<N>`) is exactly what is uploaded: the exported model and its code, the
sentence-transformers files and a README.md card generated from the training manifest and, with `--results` (the
`--output` of `evaluate.py run`), the MTEB scores and Wilcoxon tests against the other variants. The token comes from
`--hub_token`, `HF_TOKEN` or a saved login (`hf auth login`). A failed upload keeps the folders and says why.
"""

import argparse
import logging
import sys

from poolattn.hub import HubPushError, publish


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders exported by train.py (one per variant)")
    parser.add_argument("--hub_model_id", required=True, help="ORG/NAME; variant N goes to ORG/NAME-vN")
    parser.add_argument("--output_dir", default="hub", help="where the repository folders are written (default: hub)")
    parser.add_argument("--results", help="results folder of `evaluate.py run` (adds MTEB scores and comparisons)")
    parser.add_argument("--push", action="store_true", help="upload the folders (without it: a dry run)")
    parser.add_argument("--hub_token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repositories private")
    parser.add_argument("--license", help="licence id for the card (default: the base model's)")
    return parser


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        publish(args.models, hub_model_id=args.hub_model_id, output_dir=args.output_dir, push=args.push,
                results=args.results, token=args.hub_token, private=args.private, license=args.license)
    except (HubPushError, ValueError) as error:
        print(f"publish.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
