"""`python train.py` / `poolattn-train`: train.py's flags to exported model folders."""

import sys

# Only what the parsers need is imported here; each command imports the training stack (transformers' Trainer, peft,
# datasets) or the evaluation stack (mteb) when it runs, so `--help` answers without them.
from ..files import DamagedFileError, FolderBusyError
from ..launch import shut_down_process_group
from ..shared_data import SharedDataError
from .common import show_progress, storage_errors_in_one_line

TRAIN_HELP = """Fine-tune a poolattn embedding model with LoRA and a contrastive loss, then export one Hub-loadable
folder.

    python train.py --variant 5                      # embedded default: SmolLM2-135M + bundled triplets, CPU, minutes
    python train.py --variant all                    # the paper's five variants, same data order and seed
    python train.py --variant 5 --train_data data/ --query_instruction "Retrieve passages that answer the question"
    python train.py --variant 5 --train_data data/ --contrastive_batch_size 256 --gradcache_chunk_size 16
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
and the sentence-transformers files (`poolattn/hub/`);
`--push_to_hub` uploads it to `<hub_model_id>-v<N>`. (`poolattn-train` is the same command.)
"""


@storage_errors_in_one_line("train")
def train(argv: list[str] | None = None) -> int:
    """`python train.py ...` / `poolattn-train ...`: the flags of `training.parse_arguments` (see --help)."""
    argv = sys.argv[1:] if argv is None else argv
    from .. import training
    from ..backbones import BackboneError
    from ..training.trainer_arguments import TrainingDivergedError

    try:
        model_args, data_args, training_args = training.parse_arguments(argv, description=TRAIN_HELP)
    except ValueError as error:
        sys.exit(f"train: {error}")
    from ..hub.repository import HubPushError  # the model and data stack, once the flags are parsed
    from ..hub.shipping import ShippingError
    from ..training.sources import TripletDataError

    show_progress(main_process=training_args.should_log)
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
    except ShippingError as error:
        sys.exit(
            f"train: training finished and the models were exported, but no repository folder was written: {error}"
        )
    shut_down_process_group()  # only after success: after a failure another rank may be in a collective
    return 0
