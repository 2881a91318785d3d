"""Ablations of multi-layers trainable pooling: train every arm from one base variant, score each arm on MTEB,
and test every arm against the base arm (Wilcoxon signed-rank per category, paired bootstrap within each task).

    python ablate.py --ablation all              # embedded default: SmolLM2-135M, bundled triplets, 4 categories
    python ablate.py --ablation layer_weights --seeds 3         # every arm with seeds 42, 43, 44 (--seed: the first)
    python ablate.py --ablation layer_count --tasks STSBenchmark,STS13 --output ablations/
    python ablate.py --ablation head_attention -- --max_steps 100 --learning_rate 1e-4      # after --: train.py flags
    torchrun --nproc_per_node 8 ablate.py --ablation all --benchmark "MTEB(eng, v2)" --categories STS,Retrieval \\
        --data-dir "" -- --preset paper               # paper scale: Mistral-7B, ir_data, batch 2048, online tasks

Arms are `PoolAttnConfig` overrides of the base variant (default 5: bidirectional, `layers="all"`, layer weights,
multi-head attention), trained with identical data order and seed (the same train.py arguments):

- layer_count: base (all layers), last 1, last 2, last 4, last 8;
- layer_subset: base (all), last 4, middle 4;
- layer_weights: base (on, starts at zero), off (no trainable layer-weight matrix), paper init (starts at
  normal(0, 1) as in the paper's code);
- head_attention: base (multihead), single (one head as wide as the head), hierarchical (attend within groups of 4
  consecutive layers, then across the group summaries);
- all: every arm above, each trained once per seed.

Seeds: `--seeds N` trains every arm with seeds S, S+1, ..., S+N-1 (S: train.py's `--seed`, 42), the same N seeds for
every arm, so seed s gives every arm the same data order. The comparison groups an arm's seeds as replicates: mean
and spread over seeds per task and category, Wilcoxon over the seed means, paired bootstrap over units and seeds.

Scoring: by default every task of `--data-dir` in STS, Retrieval, Classification and Clustering (the four metric
families the study asks of every arm), on a budget of 100 units per task (`--budget`, the same seeded sample for every
arm; `--budget 0` scores the full tasks), then `compare` against the base arm: Wilcoxon over datasets per category and
paired bootstrap tests within each task.

Layout of `--output`: `arms/<arm>/` (train.py's output: checkpoints, then `model/`; with several seeds one
`seed-<S>/` folder per seed), `results/` (mteb results, one revision folder per seed,
`evaluate.py run`), `comparison/` (`evaluate.py compare` against the base arm: `comparison.md`, CSVs, figure).
Resumable: a seed of an arm whose `model/` exists is not retrained, an interrupted one resumes from its last
complete checkpoint, and finished tasks are not re-scored. Under torchrun every process trains; process 0 alone
evaluates and compares.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

from .budget import budget_revision
from .data import SHARED_DATA, UNSET_DATA
from .evaluation import compare_results, evaluate_models
from .jobs import JobError, TrainingJob, flag_names
from .launch import is_main_process
from .manifest import ExportedModel
from .results import results_folder

logger = logging.getLogger(__name__)

BASE_ARM = "base"
ABLATIONS = {
    "layer_count": {
        "last_1": {"layers": "last:1"},
        "last_2": {"layers": "last:2"},
        "last_4": {"layers": "last:4"},
        "last_8": {"layers": "last:8"},
    },
    "layer_subset": {"last_4": {"layers": "last:4"}, "middle_4": {"layers": "middle:4"}},
    "layer_weights": {"weights_off": {"layer_weights": False}, "weights_paper_init": {"layer_weights_init_std": 1.0}},
    "head_attention": {
        "single": {"head_attention": "single"},
        "hierarchical": {"head_attention": "hierarchical", "layer_group_size": 4},
    },
}
# The four metric families the study asks of every arm, over every local task of those categories, on a budget:
# at most DEFAULT_BUDGET units (pairs, examples, queries) per task, the same seeded sample for every arm.
DEFAULT_CATEGORIES = ("STS", "Retrieval", "Classification", "Clustering")
DEFAULT_BUDGET = 100
DEFAULT_DATA = str(SHARED_DATA) if SHARED_DATA else UNSET_DATA  # local task copies


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


def arm_model_name(backbone: str, variant: int, arm: str) -> str:
    """
    >>> arm_model_name("/models/smollm2-135m", 5, "weights_off")
    'poolattn/smollm2-135m-v5-weights-off'
    """
    return f"poolattn/{Path(backbone).name}-v{variant}-{arm.replace('_', '-')}"


def train_arm(
    arm: str,
    overrides: dict,
    *,
    output,
    base_variant: int,
    backbone: str,
    train_argv: list[str],
    seeds: int = 1,
    seed: int = 42,
) -> list[Path]:
    """Train one arm once per seed (seeds `seed`, `seed`+1, ...: one `jobs.TrainingJob` each), resuming: finished
    seeds are kept, interrupted ones continue from their last complete checkpoint. Returns the exported folders, one
    per seed (`arms/<arm>/`, or `arms/<arm>/seed-<S>/` with several seeds)."""
    from . import training  # the training stack (Trainer, peft, datasets), when a run needs it

    arm_output = Path(output) / "arms" / arm
    logger.info("arm %s: %d seed(s), overrides %s", arm, seeds, json.dumps(overrides))
    started = time.time()
    base = TrainingJob(
        flags=tuple(train_argv),
        variant=base_variant,
        model_name=arm_model_name(backbone, base_variant, arm),
        config_overrides=overrides,
    )
    exported = [
        training.run_job(
            dataclasses.replace(
                base, seed=run_seed, output_dir=str(arm_output / f"seed-{run_seed}" if seeds > 1 else arm_output)
            )
        )
        for run_seed in range(seed, seed + seeds)
    ]
    logger.info("arm %s: ready in %.0f s", arm, time.time() - started)
    return exported


def run_ablation(
    ablation: str,
    *,
    output,
    base_variant: int = 5,
    train_argv: list[str] = (),
    seeds: int = 1,
    seed: int = 42,
    tasks=None,
    categories=None,
    benchmark=None,
    data_dir=DEFAULT_DATA,
    budget: int | None = DEFAULT_BUDGET,
    batch_size: int = 32,
):
    """Train every arm once per seed (every process under torchrun), then on process 0 score each arm's seeds and
    compare the arms with the base arm, seeds grouped as replicates.

    Returns the evaluation run (failed tasks in `.failures`), or None on processes other than 0.
    """
    from . import training  # the training stack (Trainer, peft, datasets), when a run needs it

    chosen = arms(ablation)  # checks the name before anything runs
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: give how many seeds to train each arm with, >= 1.")
    if not (tasks or categories or benchmark):
        categories = list(DEFAULT_CATEGORIES)
    if clash := sorted(
        flag_names(train_argv) & TrainingJob(output_dir="-", model_name="-", config_overrides={"-": 0}).owned_flags()
    ):
        raise JobError(
            f"the training flags {', '.join('--' + name for name in clash)} are set per arm by the "
            "ablation itself (design, seeds, folders, names, overrides); give --base-variant, --seeds, "
            "--seed and --output to ablate.py instead."
        )
    backbone = training.parse_arguments(list(train_argv))[0].backbone  # also checks the training flags (and --preset)
    started = time.time()
    models = {}
    for number, (arm, overrides) in enumerate(chosen.items(), start=1):
        models[arm] = train_arm(
            arm,
            overrides,
            output=output,
            base_variant=base_variant,
            backbone=backbone,
            train_argv=list(train_argv),
            seeds=seeds,
            seed=seed,
        )
        elapsed = time.time() - started
        logger.info(
            "ablation: arm %d of %d trained (%s); elapsed %.0f s, training ETA %.0f min",
            number,
            len(chosen),
            arm,
            elapsed,
            elapsed / number * (len(chosen) - number) / 60,
        )
    if not is_main_process():
        return None
    results = Path(output) / "results"
    evaluation = evaluate_models(
        [str(folder) for folders in models.values() for folder in folders],
        output=results,
        tasks=tasks,
        categories=categories,
        benchmark=benchmark,
        data_dir=data_dir or None,
        budget=budget,
        batch_size=batch_size,
    )
    # exactly these weights' results, never an older arm's
    exported = {arm: [ExportedModel.read(folder) for folder in folders] for arm, folders in models.items()}
    folders = [
        results_folder(results, model.mteb_name, budget_revision(model.fingerprint, budget))
        for replicates in exported.values()
        for model in replicates
    ]
    compare_results(folders, output=Path(output) / "comparison", baseline=exported[BASE_ARM][0].mteb_name)
    logger.info(
        "ablation %s: %d arms, wall time %.0f s; comparison in %s",
        ablation,
        len(models),
        time.time() - started,
        Path(output) / "comparison" / "comparison.md",
    )
    return evaluation
