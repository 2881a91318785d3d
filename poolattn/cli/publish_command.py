"""`python publish.py` / `poolattn-publish` (Hub repository folders, cards, uploads) and `poolattn-export-onnx`."""

import argparse
import sys
from pathlib import Path

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from .. import study
from .common import show_progress, storage_errors_in_one_line

PUBLISH_HELP = """Publish trained poolattn models to the Hugging Face Hub: one repository per variant, with cards.

    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/            # dry run: write the five repository folders only
    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/ --push     # then upload them to ORG/poolattn-smollm2-v1 ... -v5

Each folder (`<output_dir>/<NAME>-v<N>`) is exactly what is uploaded: the exported model and its code, the
sentence-transformers files and a README.md card generated from the training manifest and, with `--results` (the
`--output` of `evaluate.py run`), the MTEB scores and Wilcoxon tests against the other variants. The token comes from
`--hub_token`, `HF_TOKEN` or a saved login (`hf auth login`). No token, or HF_HUB_OFFLINE=1, is refused before
anything is written; an upload the Hub refuses keeps the folders and says why.
A model folder's ONNX export (`onnx/`) goes with it; `--onnx` exports the models that have none first.
(`poolattn-publish` is the same command.)
"""


def publish_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=PUBLISH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders exported by training (one per variant)")
    parser.add_argument("--hub_model_id", required=True, help="ORG/NAME; variant N goes to ORG/NAME-vN")
    parser.add_argument("--output_dir", default="hub", help="where the repository folders are written (default: hub)")
    parser.add_argument("--results", help="results folder of `evaluate.py run` (adds MTEB scores and comparisons)")
    parser.add_argument(
        "--study",
        help="a study folder (study.py) the models were trained in: its table and their "
        "comparisons go on the cards (write its report first)",
    )
    parser.add_argument("--push", action="store_true", help="upload the folders (without it: a dry run)")
    parser.add_argument("--hub_token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repositories private")
    parser.add_argument("--license", help="licence id for the card (default: the base model's)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="export each model without an ONNX export first (poolattn-export-onnx, with --quantize)",
    )
    return parser


@storage_errors_in_one_line("publish")
def publish(argv: list[str] | None = None) -> int:
    """`python publish.py MODEL... --hub_model_id ORG/NAME [...]` / `poolattn-publish ...`."""
    args = publish_parser().parse_args(sys.argv[1:] if argv is None else argv)
    show_progress()
    from ..hub import repository as hub  # the model stack, once the flags are parsed
    from ..hub.repository import HubPushError

    try:
        sections = [study.card_section(args.study, folder) for folder in args.models] if args.study else None
        if args.onnx:  # every input check first: an export takes minutes per model
            hub.check_publish_inputs(
                args.models,
                hub_model_id=args.hub_model_id,
                output_dir=args.output_dir,
                results=args.results,
                push=args.push,
                token=args.hub_token,
            )
            _export_onnx_where_missing(args.models)
        hub.publish(
            args.models,
            hub_model_id=args.hub_model_id,
            output_dir=args.output_dir,
            push=args.push,
            results=args.results,
            token=args.hub_token,
            private=args.private,
            license=args.license,
            study_sections=sections,
        )
    except (HubPushError, ValueError, ImportError, FileNotFoundError, FileExistsError) as error:
        print(f"publish: {error}", file=sys.stderr)
        return 1
    return 0


def _export_onnx_where_missing(model_folders) -> None:
    from ..hub import onnx_export
    from ..onnx_poolattn import ONNX_FILE

    for folder in model_folders:  # export_onnx refuses before any work when the onnx extra is missing
        if not (Path(folder) / ONNX_FILE).is_file() or _export_outdated(folder):
            record = onnx_export.export_onnx(folder, quantize=True)
            print(f"{folder}: ONNX export written (max difference from PyTorch {record.max_abs_diff:.2g})")


def _export_outdated(folder) -> bool:
    """The folder's ONNX export was made from other weights than it holds now (a model saved again after it)."""
    from ..hub.onnx_export import EXPORT_RECORD, ONNX_FOLDER, OnnxExport
    from ..model_folder import model_fingerprint

    if not (Path(folder) / ONNX_FOLDER / EXPORT_RECORD).is_file():
        return False
    recorded = OnnxExport.read(folder).weights_fingerprint
    if recorded is not None and recorded != model_fingerprint(folder):
        print(f"{folder}: its ONNX export was made from other weights than it holds now; exporting it again")
        return True
    return False


EXPORT_ONNX_HELP = """Export poolattn model folders (backbone and pooling head) to ONNX, checked against PyTorch.

    poolattn-export-onnx runs/smollm2-135m-v5/model --quantize

writes `onnx/model.onnx` (+ `model.onnx.data`; inputs input_ids, attention_mask, pooling_mask with dynamic batch and
sequence axes; output the unnormalised embeddings), with --quantize `onnx/model_qint8.onnx` (dynamic int8), and
`onnx/export.json` into each folder. Before anything is kept, ONNX Runtime and PyTorch embed the same texts (left
and right padding, with and without a prompt, batch 1 and 5): beyond --tolerance (max absolute difference of
unit-norm embeddings) the export fails and writes nothing. Load it with `poolattn.PoolAttnOnnxModel.from_pretrained`
or `SentenceTransformer(folder, backend="onnx", trust_remote_code=True)` after publish.py.
"""


def export_onnx_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=EXPORT_ONNX_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model folders (written by training or save_pretrained)")
    parser.add_argument("--quantize", action="store_true", help="also write the dynamic int8 copy")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed ORT vs PyTorch difference on unit-norm embeddings (default 1e-4)",
    )
    return parser


@storage_errors_in_one_line("export-onnx")
def export_onnx(argv: list[str] | None = None) -> int:
    """`poolattn-export-onnx MODEL... [--quantize]`."""
    args = export_onnx_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..hub import onnx_export  # the model stack, once the flags are parsed

    show_progress()
    try:
        for folder in args.models:
            record = onnx_export.export_onnx(folder, quantize=args.quantize, tolerance=args.tolerance)
            int8 = (
                f"; int8: max difference {record.int8_max_abs_diff:.2g}, lowest cosine {record.int8_min_cosine:.4f}"
                if record.int8_file
                else ""
            )
            print(
                f"{folder}/onnx: exported in {record.export_seconds:.0f} s, max difference from PyTorch "
                f"{record.max_abs_diff:.2g}{int8}"
            )
    except (ImportError, FileNotFoundError, FileExistsError, ValueError) as error:  # OnnxExportMismatch: ValueError
        print(f"export-onnx: {error}", file=sys.stderr)
        return 1
    return 0
