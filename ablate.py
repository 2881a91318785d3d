"""Ablations of multi-layers trainable pooling: train every arm from one base variant, score each arm on MTEB,
and test every arm against the base arm (Wilcoxon signed-rank per task category).

    python ablate.py --ablation all                          # embedded default: SmolLM2-135M, bundled triplets, STS
    python ablate.py --ablation layer_count --tasks STSBenchmark,STS13 --output ablations/
    python ablate.py --ablation head_attention -- --max_steps 100 --learning_rate 1e-4      # after --: train.py flags
    torchrun --nproc_per_node 8 ablate.py --ablation all --benchmark "MTEB(eng, v2)" --categories STS,Retrieval \\
        --data-dir "" -- --preset paper                      # paper scale: Mistral-7B, ir_data, batch 2048, online tasks

Arms are `PoolAttnConfig` overrides of the base variant (default 5: bidirectional, `layers="all"`, layer weights,
multi-head attention), trained with identical data order and seed (the same train.py arguments):

| ablation | arms |
|---|---|
| layer_count | base (all layers), last 1, last 2, last 4, last 8 |
| layer_subset | base (all), last 4, middle 4 |
| layer_weights | base (on, starts at zero), off: no trainable layer-weight matrix, paper init: starts at normal(0, 1) as in the paper's code |
| head_attention | base (multihead), single: one head as wide as the head, hierarchical: attend within groups of 4 consecutive layers, then across the group summaries |
| all | every arm above, each trained once |

Layout of `--output`: `arms/<arm>/` (train.py's output: checkpoints, then `model/`), `results/` (mteb results,
`evaluate.py run`), `comparison/` (`evaluate.py compare` against the base arm: `comparison.md`, CSVs, figure).
Resumable: an arm whose `model/` exists is not retrained, an interrupted arm resumes from its last checkpoint, and
finished tasks are not re-scored. Under torchrun every process trains; process 0 alone evaluates and compares.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

BASE_ARM = "base"
ABLATIONS = {
    "layer_count": {"last_1": {"layers": "last:1"}, "last_2": {"layers": "last:2"}, "last_4": {"layers": "last:4"},
                    "last_8": {"layers": "last:8"}},
    "layer_subset": {"last_4": {"layers": "last:4"}, "middle_4": {"layers": "middle:4"}},
    "layer_weights": {"weights_off": {"layer_weights": False}, "weights_paper_init": {"layer_weights_init_std": 1.0}},
    "head_attention": {"single": {"head_attention": "single"},
                       "hierarchical": {"head_attention": "hierarchical", "layer_group_size": 4}},
}
DEFAULT_TASKS = "BIOSSES,STS13,STSBenchmark"
DEFAULT_DATA = str(Path(__file__).resolve().parents[1] / "shared" / "data")


def arms(ablation: str) -> dict[str, dict]:
    """Arm name -> `PoolAttnConfig` overrides of the base variant; the base arm (no overrides) first.

    >>> list(arms("layer_weights"))
    ['base', 'weights_off', 'weights_paper_init']
    >>> arms("layer_count")["last_2"]
    {'layers': 'last:2'}
    """
    if ablation == "all":
        chosen = {name: overrides for group in ABLATIONS.values() for name, overrides in group.items()}
    elif ablation in ABLATIONS:
        chosen = ABLATIONS[ablation]
    else:
        raise ValueError(f"--ablation {ablation!r} is not known. Allowed values: {', '.join([*ABLATIONS, 'all'])}.")
    return {BASE_ARM: {}, **chosen}


def model_name(backbone: str, variant: int, arm: str) -> str:
    return f"poolattn/{Path(backbone).name}-v{variant}-{arm.replace('_', '-')}"


def train_arm(arm: str, overrides: dict, args, train_args: list[str]) -> Path:
    """Train one arm unless its model exists; resume from the arm's last checkpoint if it was interrupted."""
    import train

    output = Path(args.output) / "arms" / arm
    model = output / "model"
    if (model / "training_manifest.json").is_file():
        print(f"arm {arm}: trained already ({model})")
        return model
    resume = ["--resume_from_checkpoint", "true"] if any(output.glob("checkpoint-*")) else []
    print(f"arm {arm}: training{' (resuming)' if resume else ''} with overrides {json.dumps(overrides)}")
    started = time.time()
    exported = train.main([
        *train_args, "--variant", str(args.base_variant), "--output_dir", str(output),
        "--config_overrides", json.dumps(overrides), "--model_name", model_name(args.backbone, args.base_variant, arm),
        *resume,
    ])[0]
    print(f"arm {arm}: trained in {time.time() - started:.0f} s")
    return exported


def evaluate_and_compare(models: dict[str, Path], args) -> int:
    """`evaluate.py run` on every arm (finished tasks are skipped), then `evaluate.py compare` against the base arm."""
    import evaluate
    from poolattn.mteb_encoder import default_model_name, model_fingerprint

    selection = [f"--{key}={value}" for key, value in (("tasks", args.tasks), ("categories", args.categories),
                                                      ("benchmark", args.benchmark)) if value]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    results = Path(args.output) / "results"
    run = ["run", *selection, *data, "--output", str(results), "--batch-size", str(args.batch_size)]
    failures = evaluate.main(run + [f"--model={folder}" for folder in models.values()])
    folders = [results / "results" / default_model_name(str(f)).replace("/", "__") / model_fingerprint(str(f))
               for f in models.values()]  # exactly these weights' results, never an older arm's
    baseline = default_model_name(str(models[BASE_ARM]))
    evaluate.main(["compare", *map(str, folders), "--baseline", baseline, "--output", str(Path(args.output) / "comparison")])
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablation", required=True, choices=[*ABLATIONS, "all"], help="which arms to train")
    parser.add_argument("--base-variant", type=int, default=5, choices=[3, 5], help="multi-layer variant to ablate")
    parser.add_argument("--output", default="ablations", help="sweep folder (arms, results, comparison)")
    parser.add_argument("--tasks", default=None, help=f"mteb tasks (default {DEFAULT_TASKS} when nothing is chosen)")
    parser.add_argument("--categories", help="task categories, e.g. STS,Retrieval (of --data-dir or --benchmark)")
    parser.add_argument("--benchmark", help='an mteb benchmark, e.g. "MTEB(eng, v2)"')
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help="local task copies ('' for the Hub)")
    parser.add_argument("--batch-size", type=int, default=32, help="encode batch size for evaluation")
    return parser


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_args = build_parser().parse_args(argv[:split]), argv[split + 1 :]
    if not (args.tasks or args.categories or args.benchmark):
        args.tasks = DEFAULT_TASKS
    chosen = arms(args.ablation)  # checks the name before anything runs
    import train

    args.backbone = train.parse_arguments(train_args)[0].backbone  # also checks train.py's flags (and --preset)
    started = time.time()
    # 1. train every arm (every process under torchrun), skipping finished arms
    models = {arm: train_arm(arm, overrides, args, train_args) for arm, overrides in chosen.items()}
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    # 2. evaluate every arm and compare each with the base arm (process 0)
    failures = evaluate_and_compare(models, args)
    print(f"ablation {args.ablation}: {len(models)} arms, wall time {time.time() - started:.0f} s; "
          f"comparison in {Path(args.output) / 'comparison' / 'comparison.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    import train

    train.shut_down_process_group()  # every arm's train.main ended with a barrier; nothing waits on other ranks here
    sys.exit(exit_code)
