"""`python evaluate.py run|compare` / `poolattn-evaluate`: score models on mteb tasks, compare their results."""

import argparse
import sys
from pathlib import Path

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from .. import evaluation
from ..evaluation.local_tasks import LocalTaskError
from ..evaluation.results import CATEGORY_ORDER, ResultsError
from .common import comma_list, positive_int, show_progress, storage_errors_in_one_line

EVALUATE_HELP = """Score embedding models on MTEB with the real mteb package, offline on local task copies; compare.

    python evaluate.py run --model outputs/smollm2-135m-v5/model --model outputs/smollm2-135m-v1/model \\
        --categories STS,PairClassification --data-dir ../shared/data --output results/
    python evaluate.py run --model path/to/all-MiniLM-L6-v2 --tasks STSBenchmark,SICK-R --data-dir ../shared/data \\
        --output results/ --no-instructions                   # a sentence-transformers baseline
    python evaluate.py run --model ORG/poolattn-smollm2-v5 --benchmark "MTEB(eng, v2)" --output results/  # Hub
    python evaluate.py compare results/results/poolattn__smollm2-135m-v1 results/results/poolattn__smollm2-135m-v5 \\
        --baseline poolattn/smollm2-135m-v1 --output comparison/

`run` writes mteb's JSON results, one folder per model under `<output>/results/` (the folder's revision is a
fingerprint of the weights, so variants never share a cache entry), skips finished tasks unless `--overwrite`, and
works with `HF_HUB_OFFLINE=1` plus `--data-dir`. `compare` writes per-task and per-category tables (Markdown, CSV),
Wilcoxon signed-rank tests per category with Holm correction, a figure, and a short summary for model cards.
(`poolattn-evaluate` is the same command.)
"""


def _run_models(args) -> int:
    run = evaluation.evaluate_models(
        args.model,
        output=args.output,
        tasks=args.tasks and comma_list(args.tasks),
        categories=args.categories and comma_list(args.categories),
        benchmark=args.benchmark,
        data_dir=args.data_dir,
        subsets=args.subsets and comma_list(args.subsets),
        budget=args.budget,
        skip_missing=args.skip_missing,
        batch_size=args.batch_size,
        max_length=args.max_length,
        instructions=not args.no_instructions,
        overwrite=args.overwrite,
        onnx_file=args.onnx,
        truncate_dim=args.truncate_dim,
        trust_remote_code=args.trust_remote_code,
    )
    for name, reason in run.passed_over.items():
        print(f"passed over: {name} ({reason})")
    for name in run.missing_tasks:
        print(f"SKIPPED (no local copy in {args.data_dir}): {name}")
    for model, scores in run.scores.items():
        for task, score in scores.items():
            print(f"{model}  {task:<32} {score:.4f}")
    for failure in run.failures:
        print(f"FAILED {failure.model} {failure.task}: {failure.error}")
    for folder in run.folders.values():
        print(f"results: {folder}")
    return 1 if run.failures else 0


def _compare(args) -> int:
    comparison = evaluation.compare_results(args.results, output=args.output, baseline=args.baseline)
    print(comparison.report)
    print(f"written: {', '.join(str(path) for path in comparison.files)}")
    if comparison.left_out:
        print(
            f"compare: {len(comparison.left_out)} score(s) left out of the means, which therefore average different "
            f"tasks: {'; '.join(comparison.left_out)}. Score the missing tasks (evaluate.py run scores only what is "
            "missing) or compare the runs that share them.",
            file=sys.stderr,
        )
        return 1
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(required=True, dest="command")
    _add_run_arguments(subparsers.add_parser("run", help="evaluate models on MTEB tasks"))
    compare = subparsers.add_parser("compare", help="tables, Wilcoxon tests and a figure from results folders")
    compare.add_argument("results", nargs="+", help="one results folder per model (e.g. results/results/ORG__NAME)")
    compare.add_argument("--baseline", help="model name every other model is tested against (default: the first)")
    compare.add_argument("--output", default="comparison", help="where to write the tables, figure and summary")
    compare.set_defaults(func=_compare)
    return parser


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    """`evaluate.py run`: the models, the task selection, the output; then the scoring settings."""
    run.add_argument(
        "--model",
        action="append",
        required=True,
        help="poolattn folder or Hub repository, or sentence-transformers folder/id; repeatable",
    )
    run.add_argument(
        "--tasks",
        nargs="+",
        help="task names, comma- or space-separated: mteb tasks, or local "
        "retrieval/reranking folders of --data-dir of any name",
    )
    run.add_argument("--categories", help=f"comma-separated task types ({', '.join(CATEGORY_ORDER)})")
    run.add_argument(
        "--benchmark",
        help='an mteb benchmark, e.g. "MTEB(eng, v2)" (alone, or to pick --categories '
        f'from), or "{evaluation.LOCAL_BENCHMARK}": every task folder of --data-dir',
    )
    run.add_argument(
        "--subsets",
        nargs="+",
        help="subsets (e.g. languages) of multi-subset tasks, comma- or "
        "space-separated (default: those the local copy holds, else all)",
    )
    run.add_argument("--output", required=True, help="results folder (mteb's layout, one folder per model)")
    run.add_argument("--data-dir", help="local task copies laid out like ../shared/data (one folder per task)")
    _add_scoring_arguments(run)
    run.set_defaults(func=_run_models)


def _add_scoring_arguments(run: argparse.ArgumentParser) -> None:
    """`evaluate.py run`: how the models are scored (sample, lengths, instructions, ONNX, dims)."""
    run.add_argument(
        "--budget",
        type=positive_int,
        help="score each task on at most N units (pairs, examples, queries; a "
        "seeded sample): for comparing models, not with published numbers",
    )
    run.add_argument("--skip-missing", action="store_true", help="run the tasks that have a local copy, list the rest")
    run.add_argument("--batch-size", type=positive_int, default=32, help="texts per encode batch (default 32)")
    run.add_argument(
        "--max-length", type=positive_int, default=None, help="tokens per text (default: the model's max_length)"
    )
    run.add_argument("--no-instructions", action="store_true", help="encode without task instructions")
    run.add_argument("--overwrite", action="store_true", help="re-run tasks that already have results")
    run.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model folder run its own code (a sentence-transformers model's, or a tokenizer's "
        "auto_map); poolattn folders never need it: the package's classes load them",
    )
    run.add_argument(
        "--truncate-dim",
        type=positive_int,
        metavar="N",
        help="score embeddings cut to their first N dims, a size the models were trained for "
        "(train.py --matryoshka_dims), stored under the revision <fingerprint>-dimN",
    )
    run.add_argument(
        "--onnx",
        nargs="?",
        const="onnx/model.onnx",
        metavar="FILE",
        help="score the poolattn models' ONNX export in ONNX Runtime (default onnx/model.onnx; e.g. "
        "onnx/model_qint8.onnx for int8), stored under the revision <fingerprint>-onnx[-qint8]",
    )


@storage_errors_in_one_line("evaluate")
def evaluate(argv: list[str] | None = None) -> int:
    """`python evaluate.py run|compare ...` / `poolattn-evaluate run|compare ...`."""
    args = evaluate_parser().parse_args(sys.argv[1:] if argv is None else argv)
    show_progress()  # the package's INFO lines and a bar per encode call: scoring moves within a task too
    from ..files import DamagedFileError
    from ..records import ManifestError  # the model stack, once the flags are parsed

    try:
        if Path(args.output).exists() and not Path(args.output).is_dir():
            raise evaluation.EvaluationError(f"--output {args.output} is a file; give a folder (it is created).")
        return args.func(args)
    except (evaluation.EvaluationError, LocalTaskError, ResultsError, ManifestError, DamagedFileError) as error:
        sys.exit(f"evaluate {args.command}: {error}")
