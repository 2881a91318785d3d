"""`python study.py` / `poolattn-study` and its door for ablations, `python ablate.py` / `poolattn-ablate`."""

import argparse
import sys
from pathlib import Path

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from .. import study
from ..files import FolderBusyError
from ..launch import is_main_process, shut_down_process_group
from ..shared_data import require_shared_data
from ..study import ablation
from .common import comma_list, show_progress, storage_errors_in_one_line


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


@storage_errors_in_one_line("ablate")
def ablate(argv: list[str] | None = None) -> int:
    """`python ablate.py --ablation NAME [...] [-- training flags]` / `poolattn-ablate ...`: a study of the base
    variant and its arms (`study.py --designs 5 --ablation NAME`), with ablate.py's defaults."""
    return run_study_command(argv, ablate=True)


def study_parser(*, ablate: bool = False) -> argparse.ArgumentParser:
    """study.py's flags; with `ablate`, ablate.py's: a base variant instead of `--designs`, `--ablation` required,
    one seed and the `ablations` folder by default."""
    parser = argparse.ArgumentParser(
        description=(ablation if ablate else study).__doc__,
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
    parser.add_argument(
        "--copy-records",
        nargs=2,
        metavar=("STUDY_DIR", "DEST"),
        help="copy a study's records without its weights and checkpoints (plan, tuning, manifests, results, report; "
        "about 0.2 MB a model) to the new folder DEST: the study command resumes there, on any machine, keeping every "
        "scored run, and --report writes its report",
    )
    parser.add_argument(
        "--previous-tests",
        metavar="CSV",
        help="an earlier study's report/study_tests.csv: the report gains a 'what changed' section (each earlier "
        "test held, flipped, newly or no longer significant); kept in the study folder for later reports",
    )
    _add_recipe_arguments(parser)
    return parser


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Every row at its best: the untrained controls, the tuning grid on held-out training rows, the plateau rule."""
    recipe = parser.add_argument_group("every row at its best: controls, tuned rates, training to a plateau")
    recipe.add_argument(
        "--controls",
        nargs="?",
        const="all",
        metavar="SEEDS",
        help="also score every row untrained (step 0: the raw backbone and its fresh head), for every seed (all, the "
        "default) or the first seed only (first: one control per row, the others' scoring saved)",
    )
    recipe.add_argument(
        "--tune",
        action="store_true",
        help="choose each row's learning rates from the grid below on held-out training rows (the "
        "first seed, a short proxy run per point); never on the evaluation tasks",
    )
    recipe.add_argument(
        "--tune-only",
        action="store_true",
        help="with --tune: run the tuning stage of every row and stop (tuning.json then holds every row's rates; "
        "nothing is trained for the table or scored); the same command without it resumes with the runs",
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
        "--tune-schedule",
        choices=("runs", "proxy"),
        default="runs",
        help="the learning-rate schedule of each proxy: 'runs' (default) the first --tune-steps steps of the runs' "
        "own schedule (--plateau-max-steps, else train.py's --max_steps), so rates are judged at the rate a run has "
        "there; 'proxy' a schedule over the proxy's own steps, decaying to 0 (studies before 2026-12-07: it favours "
        "rates at which the full runs collapse)",
    )
    recipe.add_argument(
        "--tune-extend",
        type=int,
        default=5,
        help="while a row's choice sits at the largest or smallest rate tried on an axis, try the next one past it "
        "(x3 or /3), up to N times per axis (default 5)",
    )
    _add_plateau_arguments(recipe)
    recipe.add_argument(
        "--full-sts",
        action="store_true",
        help="once every run is scored, score the row with the best STS mean on the budget sample (each seed) and "
        "its untrained control on the study's STS tasks in full (no budget): the report's headline number",
    )


def _add_plateau_arguments(recipe) -> None:
    """The plateau rule every run trains to, and the held-out rows it (and the tuning) reads."""
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
        "--plateau-export",
        choices=("best", "last"),
        default="best",
        help="the model each run exports: its checkpoint with the lowest held-out loss (default) or its last step",
    )
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


def _plan(args, train_argv: list[str], *, ablate: bool):
    """The study's plan from its flags (for ablate.py: the base variant and its arms, no instruction check)."""
    from ..study.plateau import PlateauSettings
    from ..study.tuning import TuningGrid

    return study.plan_study(
        designs=str(args.base_variant) if ablate else args.designs,
        ablation=args.ablation,
        ablation_base=args.base_variant if ablate else 5,
        instruction_check=[] if ablate else None,  # the arms' question is the head, not the prompts
        seeds=args.seeds,
        seed=args.seed,
        train_argv=[*(["--preset", args.preset] if args.preset else []), *train_argv],
        tasks=args.tasks and comma_list(args.tasks),
        categories=args.categories and comma_list(args.categories),
        benchmark=args.benchmark,
        data_dir=require_shared_data(args.data_dir, "--data-dir") or None,
        budget=args.budget or None,
        batch_size=args.batch_size,
        controls=args.controls is not None,
        control_seeds=args.controls or "all",
        full_sts=args.full_sts,
        tuning=TuningGrid(
            learning_rates=_rates("--tune-learning-rates", args.tune_learning_rates),
            head_learning_rates=_rates("--tune-head-learning-rates", args.tune_head_learning_rates),
            steps=args.tune_steps,
            eval_steps=args.tune_eval_steps,
            eval_fraction=args.held_out_fraction,
            eval_batch_size=args.held_out_batch_size,
            extend=args.tune_extend,
            schedule_steps=_runs_length(args, train_argv) if args.tune_schedule == "runs" else None,
        )
        if args.tune
        else None,
        plateau=PlateauSettings(
            patience=args.plateau_patience,
            min_improvement=args.plateau_min_improvement,
            eval_steps=args.plateau_eval_steps,
            max_steps=args.plateau_max_steps,
            exported=args.plateau_export,
            eval_fraction=args.held_out_fraction,
            eval_batch_size=args.held_out_batch_size,
        )
        if args.plateau
        else None,
    )


def _runs_length(args, train_argv: list[str]) -> int:
    """The steps every run of the study plans its learning-rate schedule over: the plateau rule's cap, else the
    training flags' `--max_steps` (a study of epochs has no such length: refused, naming --tune-schedule proxy)."""
    if args.plateau:
        return args.plateau_max_steps
    from .. import training  # the training flags as train.py reads them (the preset's steps included)

    max_steps = training.parse_arguments([*train_argv, "--variant", "1"])[2].max_steps
    if max_steps <= 0:
        raise ValueError(
            "--tune-schedule runs: the runs train by epochs (no --max_steps), so no proxy can follow their schedule; "
            "give the runs --max_steps, train them with --plateau, or use --tune-schedule proxy."
        )
    return max_steps


def _rates(flag: str, value: str) -> list[float]:
    try:
        return [float(item) for item in comma_list(value)]
    except ValueError:
        raise ValueError(f"{flag} {value!r}: give comma-separated learning rates, e.g. 1e-4,3e-4.") from None


@storage_errors_in_one_line("study")
def run_study_command(argv: list[str] | None = None, *, ablate: bool = False) -> int:
    """`python study.py [...] [-- training flags]` / `poolattn-study ...` (and, with `ablate`, ablate.py)."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_argv = study_parser(ablate=ablate).parse_args(argv[:split]), argv[split + 1 :]
    door = "ablate" if ablate else "study"
    from ..study.changes import keep_earlier_tests, read_earlier_tests
    from ..training.sources import TripletDataError
    from ..training.trainer_arguments import TrainingDivergedError

    show_progress(main_process=is_main_process())
    try:
        if args.copy_records:
            from ..study.records import copy_records

            copied = copy_records(*args.copy_records)
            print(
                f"copied: {copied.models} model(s) as weights records and {copied.result_folders} results folder(s) "
                f"to {copied.destination} ({copied.size / 1e6:.1f} MB)"
            )
            for path in copied.damaged:
                print(f"left out, damaged (a study stopped while writing it?): results/{path}")
            for export in copied.left_out:
                print(f"left out, its scores not complete (the study trains or exports it again there): {export}")
            return 0
        if args.report:
            if args.previous_tests:
                read_earlier_tests(args.previous_tests)
                study.StudyPlan.read(args.report)  # a study's folder, before the earlier tests are kept in it
                keep_earlier_tests(args.previous_tests, args.report)
            report = study.write_report(args.report)
            print(f"written: {report.path}")
            return _left_out(door, report.left_out)
        if args.tune_only and not args.tune:
            raise ValueError("--tune-only stops after the tuning stage; give --tune (and its grid) with it.")
        plan = _plan(args, train_argv, ablate=ablate)
        run = study.run_study(plan, args.output, earlier_tests=args.previous_tests, tune_only=args.tune_only)
    except TripletDataError as error:
        sys.exit(f"{door}: bad training data: {error}")
    except (ValueError, TrainingDivergedError, FolderBusyError) as error:  # StudyError, EvaluationError, flags...
        sys.exit(f"{door}: {error}")
    for failure in run.failures:
        print(f"FAILED {failure.model} {failure.task}: {failure.error}")
    if run.report:
        print(f"written: {run.report}")
    elif args.tune_only:
        print(f"tuned: every row's rates are in {Path(args.output) / 'tuning.json'}")
    shut_down_process_group()
    return max(1 if run.failures else 0, _left_out(door, run.left_out))


def _left_out(door: str, left_out: list[str]) -> int:
    """1, with every score named, when the report had to leave scores out (its means then average fewer tasks)."""
    if not left_out:
        return 0
    print(
        f"{door}: {len(left_out)} score(s) left out of the report's means or tests, which therefore average "
        f"different tasks: {'; '.join(left_out)}. Run the same study command to score what is missing.",
        file=sys.stderr,
    )
    return 1
