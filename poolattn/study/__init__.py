"""The study, run and reported: the paper's five designs, the baseline designs and the ablation arms, each trained
with several seeds on one recipe, scored on STS, Retrieval, Classification and Clustering, and laid out as the paper's
tables (Tang & Yang 2024, Tables 2-3) with the test behind every significance marker.

    python study.py --preset small --seeds 2                        # CPU: SmolLM2-135M on ../shared/data/train
    python study.py --preset small --seeds 3 --ablation layer_count,layer_weights
    python study.py --report study/                                  # the report again, from what has run so far
    torchrun --nproc_per_node 8 study.py --preset paper --seeds 3 --ablation all --benchmark "MTEB(eng, v2)" \\
        --categories STS,Retrieval,Classification,Clustering --data-dir "" --budget 0

Rows: variants 1-5 (`--designs all`), the baselines mean-causal and mean-bidirectional (`baselines`), and, with
`--ablation`, the arms of `ablation.ABLATIONS` over variant 5 (the base arm *is* the variant-5 row: same config, data
order and seed). Every row is trained with the same train.py flags (a `--preset` or any flags after `--`) and the same
seeds S..S+N-1; seed s gives every row the same data order.

Order and resuming: seed by seed (every row's first seed, then every row's second, ...), each run scored as soon as it
is trained, so an interrupted study has a complete one-seed table first. Run the same command again to resume: a
finished run is not retrained (an interrupted one continues from its last complete checkpoint) and finished tasks are
not re-scored. `study.json` in `--output` records the plan; `--report` rewrites the report from it. `--tune-only`
stops after every row's tuning; `--full-sts` scores the best row and its control on the STS tasks without the
budget at the end; `--copy-records STUDY_DIR DEST` copies the study without weights or checkpoints
(`records`), and the study resumes from the copy on another machine keeping every scored run.

Layout of `--output`: `study.json`, `runs/<row>/seed-<S>/` (train.py's output; `model/` the export), `results/`
(`evaluate.py run` results), `report/` (`study.md`, `study_table.csv`, `study_tests.csv`, `per_task.csv`,
`study.png`; with arms, `study_ablation.png`).

Tests (each marker names its test): the category-level paired bootstrap (`paired.pooled_bootstrap`: every task's units
of the category resampled, and each row's seeds, 1000 resamples; Holm over the categories of one comparison), beside
the paper's own Wilcoxon signed-rank over datasets, which cannot reach p < 0.05 with 5 or fewer datasets per category.

Modules: `plan` (what a study trains and scores: `StudyPlan`, `study.json`), `runner` (run it: tuning, controls,
training, scoring, progress, resume), `compare` (rows as seed replicates, the category tests), `report` /
`recipe_report` (the report, its CSVs and figures), `tuning` (rates chosen on held-out training rows) and `plateau`
(the plateau settings), `records` (the study copied without its weights), `full_sts` (the best row on the full STS
tasks), `ablation` (the arms: PoolAttnConfig overrides of a base variant), `card` (a study's section on a model's
card)."""

from ..lazy import lazy_exports

# Imported on first use (PEP 562): the parsers and the record types stay light, the stack behind a name loads when
# it is asked for.
_LAZY = {
    "StudyPlan": "plan",
    "StudyRow": "plan",
    "StudyError": "plan",
    "plan_study": "plan",
    "run_study": "runner",
    "write_report": "report",
    "collect": "compare",
    "comparisons": "plan",
    "card_section": "card",
    "row_job": "runner",
    "RowResults": "compare",
    "figure_groups": "report",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
