"""The ablation arms of the multi-layer designs: `PoolAttnConfig` overrides of a base variant (5 by default:
bidirectional, `layers="all"`, layer weights, multi-head attention; or 3, its causal twin). The arms are study rows:
`python ablate.py --ablation NAME` is `python study.py --designs 5 --ablation NAME` with ablate.py's defaults (one
seed, output `ablations/`, no instruction check), so both share one folder layout, one set of tests and one report
(`poolattn.study`); every study flag (`--tune`, `--plateau`, `--controls`, ...) works on both.

- layer_count: base (all layers), last 1, last 2, last 4, last 8;
- layer_subset: base (all), last 4, middle 4;
- layer_weights: base (on, starts at zero), off (no trainable layer-weight matrix), paper init (starts at
  normal(0, 1) as in the paper's code);
- head_attention: base (multihead), single (one head as wide as the head), hierarchical (attend within groups of 4
  consecutive layers, then across the group summaries);
- all: every arm above, each trained once per seed (last 4 appears in two ablations).
"""

from pathlib import Path

from ..evaluation.results import CORE_CATEGORIES
from ..shared_data import SHARED_DATA, UNSET_DATA

BASE_ARM = "base"
ABLATIONS = {
    "layer_count": {
        "last_1": {"layers": "last:1"},
        "last_2": {"layers": "last:2"},
        "last_4": {"layers": "last:4"},
        "last_8": {"layers": "last:8"},
    },
    "layer_subset": {"last_4": {"layers": "last:4"}, "middle_4": {"layers": "middle:4"}},
    "layer_weights": {
        "weights_off": {"layer_weights": False},
        "weights_paper_init": {"layer_weights_init_std": 1.0},
        "weights_x100": {"layer_weights_multiplier": 100.0},  # a matrix that moves at the head's rate
    },
    "head_attention": {
        "single": {"head_attention": "single"},
        "hierarchical": {"head_attention": "hierarchical", "layer_group_size": 4},
    },
}
# The four metric families the study asks of every arm, over every local task of those categories, on a budget:
# at most DEFAULT_BUDGET units (pairs, examples, queries) per task, the same seeded sample for every arm.
DEFAULT_CATEGORIES = CORE_CATEGORIES
DEFAULT_BUDGET = 100
DEFAULT_DATA = str(SHARED_DATA) if SHARED_DATA else UNSET_DATA  # local task copies


def arms(ablation: str) -> dict[str, dict]:
    """Arm name -> `PoolAttnConfig` overrides of the base variant; the base arm (no overrides) first.

    >>> list(arms("layer_weights"))
    ['base', 'weights_off', 'weights_paper_init', 'weights_x100']
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
