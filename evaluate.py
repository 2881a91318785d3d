"""Score embedding models on MTEB with the real mteb package, offline on local task copies, and compare them.

    python evaluate.py run --model outputs/smollm2-135m-v5/model --model outputs/smollm2-135m-v1/model \\
        --categories STS,PairClassification --data-dir ../shared/data --output results/
    python evaluate.py run --model path/to/all-MiniLM-L6-v2 --tasks STSBenchmark,SICK-R --data-dir ../shared/data \\
        --output results/ --no-instructions                   # a sentence-transformers baseline
    python evaluate.py run --model ORG/poolattn-smollm2-v5 --benchmark "MTEB(eng, v2)" --output results/  # from the Hub
    python evaluate.py compare results/results/poolattn__smollm2-135m-v1 results/results/poolattn__smollm2-135m-v5 \\
        --baseline poolattn/smollm2-135m-v1 --output comparison/

`run` writes mteb's JSON results, one folder per model under `<output>/results/` (the folder's revision is a
fingerprint of the weights, so variants never share a cache entry), skips finished tasks unless `--overwrite`, and
works with `HF_HUB_OFFLINE=1` plus `--data-dir`. `compare` writes per-task and per-category tables (Markdown, CSV),
Wilcoxon signed-rank tests per category with Holm correction, a figure, and a short summary for model cards.
"""

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("evaluate")

CATEGORY_ORDER = ("Retrieval", "Reranking", "Clustering", "PairClassification", "Classification", "STS", "Summarization")


# ----------------------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------------------


def is_poolattn_folder(path: str) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "poolattn"


def hub_poolattn_snapshot(model: str) -> str | None:
    """The local snapshot of a Hub repository published by poolattn (`publish.py`), else None."""
    if Path(model).exists() or model.count("/") != 1:
        return None
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception:  # not reachable or no config: let sentence-transformers try (and explain) below
        return None
    return snapshot_download(model) if config.get("model_type") == "poolattn" else None


def load_encoder(model: str, *, batch_size: int, max_length: int | None, instructions: bool):
    """A poolattn folder or Hub repository -> PoolAttnEncoder; else a sentence-transformers model (folder or Hub id)."""
    from poolattn.mteb_encoder import TASK_INSTRUCTIONS, PoolAttnEncoder, model_fingerprint

    folder = model if is_poolattn_folder(model) else hub_poolattn_snapshot(model)
    if folder:
        # A Hub snapshot is named by its training manifest like a local folder, else by its repository id.
        name = model if folder != model and not (Path(folder) / "training_manifest.json").is_file() else None
        return PoolAttnEncoder(folder, name=name, batch_size=batch_size, max_length=max_length,
                               instructions=TASK_INSTRUCTIONS if instructions else {})
    import mteb
    from sentence_transformers import SentenceTransformer

    transformer = SentenceTransformer(model)
    if max_length:
        transformer.max_seq_length = max_length
    encoder = mteb.SentenceTransformerEncoderWrapper(transformer)
    name = model if "/" in model and not Path(model).exists() else f"local/{Path(model).resolve().name}"
    revision = model_fingerprint(model) if Path(model).exists() else encoder.mteb_model_meta.revision
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    return encoder


def select_tasks(args) -> list:
    """mteb task objects from --tasks, --categories (of the local copies, or of --benchmark) or --benchmark."""
    import mteb

    if not (args.tasks or args.categories or args.benchmark):
        raise SystemExit("evaluate.py run: choose tasks with --tasks, --categories or --benchmark.")
    if args.tasks and (args.categories or args.benchmark):
        raise SystemExit("evaluate.py run: --tasks names the tasks itself; drop --categories/--benchmark.")
    if args.tasks:
        return [mteb.get_task(name) for name in args.tasks.split(",")]
    if args.benchmark:
        tasks = list(mteb.get_benchmark(args.benchmark).tasks)
    elif args.data_dir:
        tasks = [mteb.get_task(p.name) for p in sorted(Path(args.data_dir).iterdir()) if p.is_dir() and _known_task(p.name)]
    else:
        raise SystemExit("evaluate.py run: --categories needs --data-dir (local copies) or --benchmark to choose from.")
    if args.categories:
        wanted = set(args.categories.split(","))
        unknown = wanted - set(CATEGORY_ORDER)
        if unknown:
            raise SystemExit(f"evaluate.py run: unknown categories {sorted(unknown)}; allowed: {', '.join(CATEGORY_ORDER)}.")
        tasks = [task for task in tasks if task.metadata.type in wanted]
    return tasks


def _known_task(name: str) -> bool:
    import mteb

    try:
        mteb.get_task(name)
        return True
    except (KeyError, ValueError):
        return False


def localise(task, data_dir: Path):
    """Point a stock mteb task at `data_dir/<TaskName>`; returns None when that copy is missing."""
    import datasets

    folder = data_dir / task.metadata.name
    if not folder.is_dir():
        return None
    if task.metadata.name == "TwitterURLCorpus":  # the local copy already has the post-transform column names
        task.dataset = datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(folder / "test.jsonl"),
                                                                             split="train")})
        task.data_loaded = True
        return task
    task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset, "path": str(folder.resolve())}})
    return task


def run(args) -> int:
    import mteb

    task_names = [task.metadata.name for task in select_tasks(args)]
    if not task_names:
        raise SystemExit("evaluate.py run: no tasks selected.")
    if args.data_dir:
        missing = [name for name in task_names if not (Path(args.data_dir) / name).is_dir()]
        if missing and not args.skip_missing:
            raise SystemExit(
                f"evaluate.py run: {len(missing)} task(s) have no local copy in {args.data_dir}: {', '.join(missing)}. "
                "Add them, drop them from the selection, or pass --skip-missing to run the rest (they are listed)."
            )
        for name in missing:
            print(f"SKIPPED (no local copy in {args.data_dir}): {name}")
        task_names = [name for name in task_names if name not in missing]
    cache = mteb.ResultCache(args.output)
    failures = 0
    for model in args.model:
        encoder = load_encoder(model, batch_size=args.batch_size, max_length=args.max_length,
                               instructions=not args.no_instructions)
        tasks = [mteb.get_task(name) for name in task_names]  # fresh objects per model (evaluate unloads data)
        if args.data_dir:
            tasks = [localise(task, Path(args.data_dir)) for task in tasks]
        result = mteb.evaluate(encoder, tasks, cache=cache, encode_kwargs={"batch_size": args.batch_size},
                               overwrite_strategy="always" if args.overwrite else "only-missing", raise_error=False,
                               show_progress_bar=True)
        meta = encoder.mteb_model_meta
        folder = Path(args.output) / "results" / meta.name.replace("/", "__") / meta.revision
        write_run_settings(folder, model, encoder, args)
        for task_result in result.task_results:
            print(f"{meta.name}  {task_result.task_name:<32} {task_result.get_score():.4f}")
        for error in result.exceptions:
            failures += 1
            print(f"FAILED {meta.name} {error.task_name}: {error.exception}")
        print(f"results: {folder}")
    return 1 if failures else 0


def write_run_settings(folder: Path, model: str, encoder, args) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"model": model, "data_dir": args.data_dir, "batch_size": args.batch_size, "max_length": args.max_length,
                "instructions": getattr(encoder, "instructions", None) or None,
                "prompt_format": "Instruct: {instruction}\\nQuery: (queries and symmetric tasks; documents none)"}
    (folder / "poolattn_run.json").write_text(json.dumps(settings, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------------------------------


def load_scores(folder: str) -> tuple[str, dict[str, float], dict[str, str]]:
    """A model's results folder -> (model name, task -> main score, task -> category)."""
    import mteb
    from mteb import TaskResult

    paths = sorted(p for p in Path(folder).rglob("*.json") if p.name not in ("model_meta.json",) and p.stem != "poolattn_run")
    scores, categories, name = {}, {}, Path(folder).name
    for path in paths:
        try:
            result = TaskResult.from_disk(path)
        except Exception:  # not a task result file
            continue
        scores[result.task_name] = result.get_score()
        categories[result.task_name] = result.task_type if result.task_type else mteb.get_task(result.task_name).metadata.type
        meta = path.parent / "model_meta.json"
        if meta.is_file():
            name = json.loads(meta.read_text()).get("name", name)
    if not scores:
        raise SystemExit(f"evaluate.py compare: no mteb task results found under {folder}.")
    return name, scores, categories


def compare(args) -> int:
    from poolattn.stats import category_test_table, markdown_table, wilcoxon_by_category

    loaded = [load_scores(folder) for folder in args.results]
    names = [name for name, _, _ in loaded]
    if len(set(names)) != len(names):
        names = [f"{name} ({Path(folder).name})" for name, folder in zip(names, args.results)]
    scores = {name: task_scores for name, (_, task_scores, _) in zip(names, loaded)}
    categories = {task: category for _, _, cats in loaded for task, category in cats.items()}
    baseline = args.baseline or names[0]
    if baseline not in scores:
        raise SystemExit(f"evaluate.py compare: --baseline {baseline!r} is not one of {names}.")
    tasks = sorted(categories, key=lambda t: (_category_rank(categories[t]), t))
    category_means = {name: _category_means(scores[name], categories) for name in names}
    used_categories = sorted({categories[t] for t in tasks}, key=_category_rank)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    task_rows = [[task, categories[task], *[scores[name].get(task) for name in names]] for task in tasks]
    category_rows = [[category, sum(categories[t] == category for t in tasks),
                      *[category_means[name].get(category) for name in names]] for category in used_categories]
    average_row = ["Average (all tasks)", len(tasks), *[_mean(scores[name].values()) for name in names]]
    tests = {name: wilcoxon_by_category(scores[name], scores[baseline], categories) for name in names if name != baseline}

    report = ["# Comparison", "", "## Per task (main score)", "", markdown_table(["task", "category", *names], task_rows),
              "", "## Per category (mean main score)", "",
              markdown_table(["category", "tasks", *names], category_rows + [average_row]), ""]
    for name, category_tests in tests.items():
        report += [f"## {name} vs {baseline}: Wilcoxon signed-rank by category, Holm-corrected", "",
                   category_test_table(category_tests, name, baseline), ""]
    (output / "comparison.md").write_text("\n".join(report))
    _write_csv(output / "per_task.csv", ["task", "category", *names], task_rows)
    _write_csv(output / "per_category.csv", ["category", "tasks", *names], category_rows + [average_row])
    (output / "summary.md").write_text(summary_block(names, category_means, used_categories, tests, baseline))
    plot_categories(output / "per_category.png", names, category_means, used_categories, tests)
    print((output / "comparison.md").read_text())
    print(f"written: {output}/comparison.md, per_task.csv, per_category.csv, summary.md, per_category.png")
    return 0


def summary_block(names, category_means, categories, tests, baseline) -> str:
    """Compact Markdown for model cards: per-category means, with a marker where a model differs significantly."""
    from poolattn.stats import markdown_table

    rows = []
    for name in names:
        significant = {t.category for t in tests.get(name, []) if t.significant()}
        rows.append([name, *[f"{category_means[name][c]:.4f}{'*' if c in significant else ''}"
                             if c in category_means[name] else None for c in categories]])
    note = f"\n\n\\* significantly different from {baseline} (Wilcoxon signed-rank by dataset, Holm-corrected, p < 0.05)."
    return markdown_table(["model", *categories], rows) + note + "\n"


def plot_categories(path: Path, names, category_means, categories, tests) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(names)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(categories)), 4))
    for position, name in enumerate(names):
        values = [category_means[name].get(c, 0.0) for c in categories]
        xs = [i + position * width for i in range(len(categories))]
        axis.bar(xs, values, width, label=name)
        significant = {t.category for t in tests.get(name, []) if t.significant()}
        for x, value, category in zip(xs, values, categories):
            if category in significant:
                axis.text(x, value, "*", ha="center", va="bottom", fontsize=14)
    axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(categories))], categories, rotation=20)
    axis.set_ylabel("mean main score")
    axis.set_title("Per-category scores (* significant vs baseline, Holm-corrected)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _category_rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def _category_means(task_scores: dict[str, float], categories: dict[str, str]) -> dict[str, float]:
    grouped: dict[str, list[float]] = {}
    for task, score in task_scores.items():
        grouped.setdefault(categories[task], []).append(score)
    return {category: _mean(values) for category, values in grouped.items()}


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------------------------------
# command line: one small parser-builder per subcommand
# ----------------------------------------------------------------------------------------------------------------------


def add_run_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="evaluate models on MTEB tasks")
    parser.add_argument("--model", action="append", required=True, help="poolattn folder, or sentence-transformers folder/id; repeatable")
    parser.add_argument("--tasks", help="comma-separated mteb task names")
    parser.add_argument("--categories", help=f"comma-separated task types ({', '.join(CATEGORY_ORDER)})")
    parser.add_argument("--benchmark", help='an mteb benchmark, e.g. "MTEB(eng, v2)" (alone, or to pick --categories from)')
    parser.add_argument("--output", required=True, help="results folder (mteb's layout, one folder per model)")
    parser.add_argument("--data-dir", help="local task copies laid out like ../shared/data (one folder per task)")
    parser.add_argument("--skip-missing", action="store_true", help="run the tasks that have a local copy, list the rest")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's max_length)")
    parser.add_argument("--no-instructions", action="store_true", help="encode without task instructions")
    parser.add_argument("--overwrite", action="store_true", help="re-run tasks that already have results")
    parser.set_defaults(func=run)


def add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="tables, Wilcoxon tests and a figure from results folders")
    parser.add_argument("results", nargs="+", help="one results folder per model (e.g. results/results/ORG__NAME)")
    parser.add_argument("--baseline", help="model name every other model is tested against (default: the first)")
    parser.add_argument("--output", default="comparison", help="where to write the tables, figure and summary")
    parser.set_defaults(func=compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(required=True)
    add_run_parser(subparsers)
    add_compare_parser(subparsers)
    return parser


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
