"""The command-line doors: parse arguments, call the package, print what a user needs, turn exceptions into exit codes.

Each function backs one console command and one top-level script of a source checkout:

| command | script | library function |
|---|---|---|
| `poolattn-train` | `python train.py` | `poolattn.training.run` |
| `poolattn-evaluate run/compare` | `python evaluate.py` | `poolattn.evaluation.evaluate_models` / `compare_results` |
| `poolattn-ablate` | `python ablate.py` | `poolattn.study.run_study` (the arms are study rows) |
| `poolattn-study` | `python study.py` | `poolattn.study.run_study` |
| `poolattn-publish` | `python publish.py` | `poolattn.hub.publish` |
| `poolattn-mine` | `python mine.py` | `poolattn.training.mining.mine_hard_negatives` |
| `poolattn-export-onnx` | — | `poolattn.hub.onnx_export.export_onnx` |

One module per command (`train_command`, `evaluate_command`, `study_command`, `mine_command`, `publish_command`;
`common` for what they share). Library code logs through `logging` (logger `poolattn.*`); the doors show its INFO
messages on the main process.
"""

from .evaluate_command import evaluate
from .mine_command import mine
from .publish_command import export_onnx, publish
from .study_command import ablate, run_study_command
from .train_command import train

__all__ = ["ablate", "evaluate", "export_onnx", "mine", "publish", "run_study_command", "train"]
