"""One model's seeds as replicates: runs grouped by name and training recipe, each task's mean and spread over
seeds."""

import statistics
from dataclasses import dataclass
from pathlib import Path

from .results import ModelResults, category_means, mean


@dataclass
class SeedReplicates:
    """One model's results over its training seeds: runs of one name and recipe, each trained with its own seed,
    scored on the same data. A model trained once (or not by poolattn) is a group of one run.

    Its score on a task is the mean over the seeds; only tasks every seed scored count, so a category mean never
    averages different task sets (`left_out` names the others).
    """

    label: str  # how tables name it
    runs: list[ModelResults]  # sorted by seed

    @property
    def name(self) -> str:
        return self.runs[0].name

    @property
    def seeds(self) -> list[int | None]:
        return [run.origin.seed if run.origin else None for run in self.runs]

    @property
    def budget(self) -> int | None:
        return self.runs[0].budget

    @property
    def data_dir(self) -> str | None:
        return self.runs[0].data_dir

    @property
    def tasks(self) -> list[str]:
        return sorted(set.intersection(*(set(run.scores) for run in self.runs)))

    @property
    def left_out(self) -> dict[str, str]:
        """Tasks some seeds scored and others did not, with how many did."""
        every = set().union(*(run.scores for run in self.runs)) - set(self.tasks)
        return {
            task: f"scored by {sum(task in run.scores for run in self.runs)} of {len(self.runs)} seeds"
            for task in sorted(every)
        }

    @property
    def seed_scores(self) -> dict[str, list[float]]:
        """Task -> main score of every seed, in `runs` order."""
        return {task: [run.scores[task] for run in self.runs] for task in self.tasks}

    @property
    def scores(self) -> dict[str, float]:
        return {task: mean(values) for task, values in self.seed_scores.items()}

    @property
    def categories(self) -> dict[str, str]:
        categories = self.runs[0].categories
        return {task: categories[task] for task in self.tasks}

    def category_means(self) -> dict[str, float]:
        return category_means(self.scores, self.categories)

    def spread(self, task: str) -> float | None:
        """Sample standard deviation of the task's score over the seeds; None with one seed."""
        return standard_deviation(self.seed_scores[task])

    def category_spread(self) -> dict[str, float | None]:
        """Per category: the sample standard deviation over seeds of each seed's category mean."""
        categories = self.categories
        per_seed = [category_means({task: run.scores[task] for task in self.tasks}, categories) for run in self.runs]
        return {category: standard_deviation([means[category] for means in per_seed]) for category in per_seed[0]}

    def predictions(self, task: str) -> list | None:
        """Every seed's saved predictions of `task`, or None when a run kept none."""
        predictions = [run.predictions(task) for run in self.runs]
        return None if any(prediction is None for prediction in predictions) else predictions


def standard_deviation(values) -> float | None:
    """Sample standard deviation (n - 1, `statistics.stdev`); None for fewer than two values.

    >>> standard_deviation([0.5, 0.7])
    0.1414...
    """
    values = list(values)
    return statistics.stdev(values) if len(values) >= 2 else None


def group_replicates(runs: list[ModelResults]) -> tuple[list[SeedReplicates], list[str]]:
    """Seed replicates grouped, in first-seen order; and a note for every set of runs of one name left ungrouped.

    Runs are one model's seeds when they share the name, the recipe and the data, and each has its own seed. Runs of
    one name that are not (no training record, another recipe, a repeated seed) stay apart, named by revision, and
    never mix with another model's runs.
    """
    by_name: dict[str, list[ModelResults]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    groups, notes = [], []
    for name, members in by_name.items():
        by_recipe: dict[tuple, list[ModelResults]] = {}
        for run in members:
            place = str(Path(run.data_dir).resolve()) if run.data_dir else None  # as given by older runs, resolved
            key = (run.origin.recipe, place) if run.origin and run.origin.seed is not None else (run.revision,)
            by_recipe.setdefault(key, []).append(run)
        for key, replicates in list(by_recipe.items()):
            seeds = [run.origin.seed for run in replicates] if len(key) == 2 else [None]
            if len(set(seeds)) != len(seeds):
                notes.append(
                    f"{name}: {len(replicates)} runs of one recipe share seeds {sorted(seeds)}; they are "
                    "not independent replicates and are listed apart, by revision."
                )
                del by_recipe[key]
                by_recipe.update({(run.revision,): [run] for run in replicates})
        if len(by_recipe) > 1:
            notes.append(
                f"{name}: {len(members)} runs of {len(by_recipe)} different recipes, data or untracked "
                "origins; each is listed apart, by revision (or by recipe for seed groups)."
            )
        for key, replicates in by_recipe.items():
            replicates = sorted(replicates, key=lambda run: run.origin.seed if len(key) == 2 else 0)
            if len(by_recipe) == 1:
                label = name
            elif len(replicates) > 1:
                label = f"{name} (recipe {key[0]})"
            else:
                label = f"{name} ({replicates[0].revision})"
            groups.append(SeedReplicates(label, replicates))
    return groups, notes
