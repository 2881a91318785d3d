"""Run by test_training.py under `torchrun --nproc_per_node 2`: one ContrastiveTrainer step on 2 CPU ranks (gloo),
dumping every trainable gradient after the DDP all-reduce and the rows each rank saw.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py BACKBONE_FOLDER OUT_DIR GRADCACHE_CHUNK
"""

import sys
from pathlib import Path

import datasets
import torch
import torch.distributed as dist
from conftest import TRIPLETS
from transformers import TrainerCallback

from poolattn import launch, training
from poolattn.training.collator import TripletCollator
from poolattn.training.trainer import ContrastiveTrainer, ContrastiveTrainingArguments


class RecordingCollator(TripletCollator):
    def __call__(self, rows):
        self.seen = [row["row"] for row in rows]
        return super().__call__(rows)


class DumpGradients(TrainerCallback):
    def __init__(self, out_dir, collator):
        self.out_dir, self.collator = Path(out_dir), collator

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        gradients = {
            n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, self.collator.seen)
        if dist.get_rank() == 0:
            torch.save({"gradients": gradients, "rows_per_rank": rows}, self.out_dir / "ddp_gradients.pt")


def main(backbone_folder: str, out_dir: str, chunk: int) -> None:
    torch.manual_seed(0)
    model_args = training.ModelArguments(
        variant="5", backbone=backbone_folder, lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    model, tokenizer = training.build_model(model_args, backbone_folder, 5)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    args = ContrastiveTrainingArguments(
        output_dir=str(Path(out_dir) / "run"),
        use_cpu=True,
        report_to="none",
        ddp_backend="gloo",
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.0,
        max_grad_norm=0.0,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_drop_last=True,
        train_sampling_strategy="sequential",
        ddp_find_unused_parameters=False,
        seed=0,
        gradcache_chunk_size=chunk,
        temperature=0.05,
        gather_across_devices=True,
    )
    collator = RecordingCollator(tokenizer, query_max_length=32, document_max_length=32, add_eos=True)
    dataset = datasets.Dataset.from_list([{**row, "row": i} for i, row in enumerate(TRIPLETS[:8])])
    trainer = ContrastiveTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.add_callback(DumpGradients(out_dir, collator))
    trainer.train()
    launch.finish_collectives()  # as training.run does


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    # as the train command does, once the trainer (main's local) is released; without it gloo may abort the run at
    # exit, and with the DDP-wrapped model still alive it may deadlock
    launch.shut_down_process_group()
