"""The command-line doors: parse arguments, call the package, print what a user needs, turn exceptions into exit codes.

Each function backs one console command and one top-level script of a source checkout:

| command | script | library function |
|---|---|---|
| `poolattn-train` | `python train.py` | `poolattn.training.run` |
| `poolattn-evaluate run/compare` | `python evaluate.py` | `poolattn.evaluation.evaluate_models` / `compare_results` |
| `poolattn-ablate` | `python ablate.py` | `poolattn.study.run_study` (the arms are study rows) |
| `poolattn-study` | `python study.py` | `poolattn.study.run_study` |
| `poolattn-publish` | `python publish.py` | `poolattn.hub.publish` |

Library code logs through `logging` (logger `poolattn.*`); the doors show its INFO messages on the main process.
"""

import argparse
import logging
import sys
from pathlib import Path

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from . import evaluation, study
from .evaluation.local_tasks import LocalTaskError
from .evaluation.results import CATEGORY_ORDER, ResultsError
from .files import DamagedFileError, FolderBusyError
from .hub import repository as hub
from .hub.repository import HubPushError
from .launch import is_main_process, shut_down_process_group
from .manifest import ManifestError
from .study import ablation
from .study import runner as study_runner
from .study.tuning import PlateauSettings, TuningGrid
from .training import mining
from .training.data import SharedDataError, TripletDataError, require_shared_data


def _show_progress(*, main_process: bool = True) -> None:
    """The package's INFO messages (what was trained, written, skipped) on the main process; warnings everywhere."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("poolattn").setLevel(logging.INFO if main_process else logging.WARNING)


def _comma_list(value) -> list[str]:
    """Names given comma-separated, space-separated (several arguments) or both."""
    values = value if isinstance(value, list) else [value]
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _storage_errors_in_one_line(command: str):
    """A door's decorator: a full disk, a read-only folder or a missing permission ends the command with one line
    (which file, what happened, what to do) instead of a traceback; the package's writes are atomic, so nothing
    half-written is left behind."""
    import errno
    import functools

    advice = {
        errno.ENOSPC: "no space left on the device: free some space (or give a folder on another disk), then "
        "run the same command again; finished work is kept",
        errno.EDQUOT: "disk quota exceeded: free some space, then run the same command again",
        errno.EROFS: "the file system is read-only: give a folder you can write to",
        errno.EACCES: "permission denied: give a folder you can write to (or fix its permissions)",
        errno.EPERM: "operation not permitted: give a folder you can write to",
    }

    def decorate(door):
        @functools.wraps(door)
        def run(*args, **kwargs):
            try:
                return door(*args, **kwargs)
            except OSError as error:
                if error.errno not in advice:
                    raise
                where = error.filename or "a file"
                sys.exit(f"{command}: could not write {where}: {advice[error.errno]}.")

        return run

    return decorate


# ---------------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------------


TRAIN_HELP = """Fine-tune a poolattn embedding model with LoRA and a contrastive loss, then export one Hub-loadable
folder.

    python train.py --variant 5                      # embedded default: SmolLM2-135M + bundled triplets, CPU, minutes
    python train.py --variant all                    # the paper's five variants, same data order and seed
    python train.py --variant 5 --train_data data/ --query_instruction "Retrieve passages that answer the question"
    python train.py --variant 5 --gradcache_chunk_size 16 --contrastive_batch_size 256
    python train.py --variant 5 --resume_from_checkpoint true     # continue from the last checkpoint in output_dir
    python train.py args.json                        # every argument from a JSON file
    python train.py --variant all --push_to_hub --hub_model_id ORG/NAME   # then publish ORG/NAME-v1 ... ORG/NAME-v5
    python train.py --variant 5 --hub_model_id ORG/NAME --hub_dry_run hub/  # write the repository folder only
    torchrun --nproc_per_node 8 train.py --preset paper --variant 5   # the paper's recipe (Mistral-7B, ir_data)
    accelerate launch --config_file configs/ddp.yaml train.py --preset paper --variant 5            # the same
    accelerate launch --config_file configs/deepspeed_zero2.yaml train.py --preset paper --variant 5 \\
        --gradcache_chunk_size 0 --per_device_train_batch_size 16           # ZeRO-2: no GradCache, batch 16 x GPUs

The model is written to `<output_dir>/model` (per variant `<output_dir>/v<N>/model` with `--variant all`), with
`training_manifest.json`; it loads with `AutoModel.from_pretrained(path, trust_remote_code=True)` without peft.
With `--push_to_hub` or `--hub_dry_run`, each variant then gets a Hub repository folder with a generated model card
and the sentence-transformers files (`poolattn/hub.py`);
`--push_to_hub` uploads it to `<hub_model_id>-v<N>`. (`poolattn-train` is the same command.)
"""


@_storage_errors_in_one_line("train")
def train(argv: list[str] | None = None) -> int:
    """`python train.py ...` / `poolattn-train ...`: the flags of `training.parse_arguments` (see --help)."""
    argv = sys.argv[1:] if argv is None else argv
    from .backbones import BackboneError
    from .training import runner as training
    from .training.trainer_arguments import TrainingDivergedError

    try:
        model_args, data_args, training_args = training.parse_arguments(argv, description=TRAIN_HELP)
    except ValueError as error:
        sys.exit(f"train: {error}")
    _show_progress(main_process=training_args.should_log)
    try:
        training.run(model_args, data_args, training_args)
    except TripletDataError as error:
        sys.exit(f"train: bad training data: {error}")
    except (
        training.TrainingSetupError,
        BackboneError,
        TrainingDivergedError,
        FolderBusyError,
        DamagedFileError,
        SharedDataError,
    ) as error:
        sys.exit(f"train: {error}")
    except HubPushError as error:
        sys.exit(f"train: training finished and the models were exported, but the push failed: {error}")
    shut_down_process_group()  # only after success: after a failure another rank may be in a collective
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------------

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
        tasks=args.tasks and _comma_list(args.tasks),
        categories=args.categories and _comma_list(args.categories),
        benchmark=args.benchmark,
        data_dir=args.data_dir,
        subsets=args.subsets and _comma_list(args.subsets),
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
    for name, scores in run.scores.items():
        for task, score in scores.items():
            print(f"{name}  {task:<32} {score:.4f}")
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
    run = subparsers.add_parser("run", help="evaluate models on MTEB tasks")
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
    run.add_argument(
        "--budget",
        type=int,
        help="score each task on at most N units (pairs, examples, queries; a "
        "seeded sample): for comparing models, not with published numbers",
    )
    run.add_argument("--skip-missing", action="store_true", help="run the tasks that have a local copy, list the rest")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's max_length)")
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
        type=int,
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
    run.set_defaults(func=_run_models)
    compare = subparsers.add_parser("compare", help="tables, Wilcoxon tests and a figure from results folders")
    compare.add_argument("results", nargs="+", help="one results folder per model (e.g. results/results/ORG__NAME)")
    compare.add_argument("--baseline", help="model name every other model is tested against (default: the first)")
    compare.add_argument("--output", default="comparison", help="where to write the tables, figure and summary")
    compare.set_defaults(func=_compare)
    return parser


@_storage_errors_in_one_line("evaluate")
def evaluate(argv: list[str] | None = None) -> int:
    """`python evaluate.py run|compare ...` / `poolattn-evaluate run|compare ...`."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = evaluate_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (evaluation.EvaluationError, LocalTaskError, ResultsError, ManifestError) as error:
        sys.exit(f"evaluate {args.command}: {error}")


# ---------------------------------------------------------------------------------------------------------------------
# ablate
# ---------------------------------------------------------------------------------------------------------------------


def ablate_parser() -> argparse.ArgumentParser:
    """ablate.py: the study's parser with one base design instead of `--designs`, `--ablation` required, one seed."""
    return study_parser(ablate=True)


def _add_scoring_arguments(parser: argparse.ArgumentParser, compared: str) -> None:
    """The task selection and scoring flags of the commands that train and then score (ablate, study)."""
    parser.add_argument(
        "--tasks",
        help="mteb tasks or local task folders (default: every task of --data-dir in "
        f"{','.join(ablation.DEFAULT_CATEGORIES)})",
    )
    parser.add_argument("--categories", help="task categories, e.g. STS,Retrieval (of --data-dir or --benchmark)")
    parser.add_argument("--benchmark", help='an mteb benchmark, e.g. "MTEB(eng, v2)"')
    parser.add_argument("--data-dir", default=ablation.DEFAULT_DATA, help="local task copies ('' for the Hub)")
    parser.add_argument(
        "--budget",
        type=int,
        default=ablation.DEFAULT_BUDGET,
        help=f"at most N units (pairs, examples, queries) per task, the same sample for every "
        f"{compared} (default {ablation.DEFAULT_BUDGET}); 0 scores the full tasks",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="encode batch size for evaluation")


@_storage_errors_in_one_line("ablate")
def ablate(argv: list[str] | None = None) -> int:
    """`python ablate.py --ablation NAME [...] [-- training flags]` / `poolattn-ablate ...`: a study of the base
    variant and its arms (`study.py --designs 5 --ablation NAME`), with ablate.py's defaults."""
    return run_study_command(argv, ablate=True)


# ---------------------------------------------------------------------------------------------------------------------
# study
# ---------------------------------------------------------------------------------------------------------------------


def study_parser(*, ablate: bool = False) -> argparse.ArgumentParser:
    """study.py's flags; with `ablate`, ablate.py's: a base variant instead of `--designs`, `--ablation` required,
    one seed and the `ablations` folder by default."""
    parser = argparse.ArgumentParser(
        description=(ablation if ablate else study_runner).__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", help="train.py's named recipe for every row (small: the CPU recipe; paper)")
    arms = (
        f"all, or a comma list of {', '.join(ablation.ABLATIONS)}, or of single arms <ablation>:<arm> (e.g. "
        "layer_weights:weights_off)"
    )
    if ablate:
        parser.add_argument("--ablation", required=True, help=f"which arms to train beside the base: {arms}")
        parser.add_argument(
            "--base-variant", type=int, default=5, choices=[3, 5], help="the multi-layer variant the arms change"
        )
    else:
        parser.add_argument(
            "--designs",
            default="all,baselines",
            help="train.py --variant value: all (variants 1-5), baselines (mean-causal, "
            "mean-bidirectional), or a comma list (default all,baselines)",
        )
        parser.add_argument("--ablation", default="none", help=f"ablation arms of variant 5: none, {arms}")
    seeds = 1 if ablate else 2
    parser.add_argument(
        "--seeds", type=int, default=seeds, help=f"seeds per row: --seed, --seed+1, ... (default {seeds})"
    )
    parser.add_argument("--seed", type=int, default=42, help="the first seed (default 42)")
    output = "ablations" if ablate else "study"
    parser.add_argument(
        "--output", default=output, help=f"study folder: plan, runs, results, report (default {output})"
    )
    _add_scoring_arguments(parser, "arm" if ablate else "row")
    parser.add_argument("--report", metavar="STUDY_DIR", help="only write the report of this study folder again")
    recipe = parser.add_argument_group("every row at its best: controls, tuned rates, training to a plateau")
    recipe.add_argument(
        "--controls",
        action="store_true",
        help="also score every row and seed untrained (step 0: the raw backbone and its fresh head)",
    )
    recipe.add_argument(
        "--tune",
        action="store_true",
        help="choose each row's learning rates from the grid below on held-out training rows (the "
        "first seed, a short proxy run per point); never on the evaluation tasks",
    )
    recipe.add_argument(
        "--tune-learning-rates",
        default="1e-4,3e-4",
        metavar="R,R",
        help="adapter (backbone) rates to try (default 1e-4,3e-4)",
    )
    recipe.add_argument(
        "--tune-head-learning-rates",
        default="1e-4,1e-3,1e-2",
        metavar="R,R",
        help="pooling-head rates to try, rows with a head (default 1e-4,1e-3,1e-2)",
    )
    recipe.add_argument("--tune-steps", type=int, default=30, help="steps of each proxy run (default 30)")
    recipe.add_argument("--tune-eval-steps", type=int, default=10, help="held-out evaluation every N proxy steps")
    recipe.add_argument(
        "--plateau",
        action="store_true",
        help="train every run to the plateau of its held-out loss (rule below), not a fixed count",
    )
    recipe.add_argument(
        "--plateau-patience",
        type=int,
        default=3,
        help="evaluations without an improvement before stopping (default 3)",
    )
    recipe.add_argument(
        "--plateau-min-improvement",
        type=float,
        default=0.01,
        help="relative improvement of the held-out loss that counts (default 0.01 = 1%%)",
    )
    recipe.add_argument("--plateau-eval-steps", type=int, default=20, help="held-out evaluation every N steps")
    recipe.add_argument("--plateau-max-steps", type=int, default=300, help="the cap (default 300 steps)")
    recipe.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.01,
        help="training rows held out (seeded) for tuning and the plateau rule (default 0.01)",
    )
    recipe.add_argument(
        "--held-out-batch-size",
        type=int,
        default=16,
        help="queries per held-out batch (in-batch negatives, as in training; default 16)",
    )
    return parser


def _rates(flag: str, value: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(value)]
    except ValueError:
        raise ValueError(f"{flag} {value!r}: give comma-separated learning rates, e.g. 1e-4,3e-4.") from None


@_storage_errors_in_one_line("study")
def run_study_command(argv: list[str] | None = None, *, ablate: bool = False) -> int:
    """`python study.py [...] [-- training flags]` / `poolattn-study ...` (and, with `ablate`, ablate.py)."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_argv = study_parser(ablate=ablate).parse_args(argv[:split]), argv[split + 1 :]
    door = "ablate" if ablate else "study"
    from .training.trainer_arguments import TrainingDivergedError

    _show_progress(main_process=is_main_process())
    try:
        if args.report:
            print(f"written: {study.write_report(args.report)}")
            return 0
        plan = study.plan_study(
            designs=str(args.base_variant) if ablate else args.designs,
            ablation=args.ablation,
            ablation_base=args.base_variant if ablate else 5,
            instruction_check=[] if ablate else None,  # the arms' question is the head, not the prompts
            seeds=args.seeds,
            seed=args.seed,
            train_argv=[*(["--preset", args.preset] if args.preset else []), *train_argv],
            tasks=args.tasks and _comma_list(args.tasks),
            categories=args.categories and _comma_list(args.categories),
            benchmark=args.benchmark,
            data_dir=require_shared_data(args.data_dir, "--data-dir") or None,
            budget=args.budget or None,
            batch_size=args.batch_size,
            controls=args.controls,
            tuning=TuningGrid(
                learning_rates=_rates("--tune-learning-rates", args.tune_learning_rates),
                head_learning_rates=_rates("--tune-head-learning-rates", args.tune_head_learning_rates),
                steps=args.tune_steps,
                eval_steps=args.tune_eval_steps,
                eval_fraction=args.held_out_fraction,
                eval_batch_size=args.held_out_batch_size,
            )
            if args.tune
            else None,
            plateau=PlateauSettings(
                patience=args.plateau_patience,
                min_improvement=args.plateau_min_improvement,
                eval_steps=args.plateau_eval_steps,
                max_steps=args.plateau_max_steps,
                eval_fraction=args.held_out_fraction,
                eval_batch_size=args.held_out_batch_size,
            )
            if args.plateau
            else None,
        )
        run = study.run_study(plan, args.output)
    except TripletDataError as error:
        sys.exit(f"{door}: bad training data: {error}")
    except (ValueError, TrainingDivergedError, FolderBusyError) as error:  # StudyError, EvaluationError, flags...
        sys.exit(f"{door}: {error}")
    for failure in run.failures:
        print(f"FAILED {failure.model} {failure.task}: {failure.error}")
    if run.report:
        print(f"written: {run.report}")
    shut_down_process_group()
    return 1 if run.failures else 0


# ---------------------------------------------------------------------------------------------------------------------
# mine
# ---------------------------------------------------------------------------------------------------------------------


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
        help="negatives per query in all, given ones first (default %(default)s)",
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
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let the model folder run its own code (a sentence-transformers model's, or a "
        "tokenizer's auto_map); poolattn folders never need it",
    )
    return parser


@_storage_errors_in_one_line("mine")
def mine(argv: list[str] | None = None) -> int:
    """`python mine.py --train_data DATA --model MODEL --output DIR [...]` / `poolattn-mine ...`."""
    args = mine_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _show_progress()
    settings = mining.MiningSettings(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin if args.relative_margin is None or args.relative_margin >= 0 else None,
        replace_given=args.replace_given,
        query_instruction=args.query_instruction,
        batch_size=args.batch_size,
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
    print(f"mined in {run.seconds:.0f} s; provenance: {Path(args.output) / mining.PROVENANCE_FILE}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------------------------------------------------

PUBLISH_HELP = """Publish trained poolattn models to the Hugging Face Hub: one repository per variant, with cards.

    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/            # dry run: write the five repository folders only
    python publish.py outputs/smollm2-135m-vall/v{1,2,3,4,5}/model --hub_model_id ORG/poolattn-smollm2 \\
        --results results/ --output_dir hub/ --push     # then upload them to ORG/poolattn-smollm2-v1 ... -v5

Each folder (`<output_dir>/<NAME>-v<N>`) is exactly what is uploaded: the exported model and its code, the
sentence-transformers files and a README.md card generated from the training manifest and, with `--results` (the
`--output` of `evaluate.py run`), the MTEB scores and Wilcoxon tests against the other variants. The token comes from
`--hub_token`, `HF_TOKEN` or a saved login (`hf auth login`). A failed upload keeps the folders and says why.
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


@_storage_errors_in_one_line("publish")
def publish(argv: list[str] | None = None) -> int:
    """`python publish.py MODEL... --hub_model_id ORG/NAME [...]` / `poolattn-publish ...`."""
    args = publish_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _show_progress()
    try:
        sections = [study.card_section(args.study, folder) for folder in args.models] if args.study else None
        if args.onnx:
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
    except (HubPushError, ValueError, ImportError, FileNotFoundError) as error:
        print(f"publish: {error}", file=sys.stderr)
        return 1
    return 0


def _export_onnx_where_missing(model_folders) -> None:
    from .hub import onnx_export
    from .onnx_poolattn import ONNX_FILE

    for folder in model_folders:  # export_onnx refuses before any work when the onnx extra is missing
        if not (Path(folder) / ONNX_FILE).is_file():
            record = onnx_export.export_onnx(folder, quantize=True)
            print(f"{folder}: ONNX export written (max difference from PyTorch {record.max_abs_diff:.2g})")


# ---------------------------------------------------------------------------------------------------------------------
# export-onnx
# ---------------------------------------------------------------------------------------------------------------------

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


@_storage_errors_in_one_line("export-onnx")
def export_onnx(argv: list[str] | None = None) -> int:
    """`poolattn-export-onnx MODEL... [--quantize]`."""
    from .hub import onnx_export

    args = export_onnx_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _show_progress()
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
    except (ImportError, FileNotFoundError, ValueError) as error:  # OnnxExportMismatch is a ValueError
        print(f"export-onnx: {error}", file=sys.stderr)
        return 1
    return 0
