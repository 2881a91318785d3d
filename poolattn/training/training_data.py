"""The training rows a run reads, as its data flags ask (`--train_data`, streamed or loaded, instructions and weights
per source, `--max_train_samples`), with the fingerprint of the files as they were read: the run records the data it
trained on, and a resume compares it."""

from .arguments import DataArguments, TrainingSetupError
from .batching import stream_triplets
from .data import Triplets, load_triplets, set_source_instructions, set_source_weights
from .sources import TripletDataError, fingerprint_files
from .trainer_arguments import TrainingRunArguments


def training_triplets(data_args: DataArguments, training_args: TrainingRunArguments) -> Triplets:
    """The training rows as `--train_data` and the data flags ask: streamed or loaded, with each source's
    instruction and weight, capped at `--max_train_samples`; their fingerprint taken as they were read (files
    changed while they were loaded are refused)."""
    fingerprint = fingerprint_files(data_args.train_data)
    if data_args.streaming:
        if training_args.max_steps < 1:
            raise TrainingSetupError("--streaming needs --max_steps (the data is not counted in epochs).")
        triplets = stream_triplets(
            data_args.train_data,
            batch_size=training_args.per_device_train_batch_size * training_args.world_size,
            seed=training_args.seed,
            buffer_size=data_args.shuffle_buffer_size,
            negatives_per_query=data_args.negatives_per_query,
            skip_invalid=data_args.skip_invalid_rows,
            split=data_args.data_split,
        )
    else:
        triplets = load_triplets(
            data_args.train_data,
            split=data_args.data_split,
            skip_invalid=data_args.skip_invalid_rows,
            negatives_per_query=data_args.negatives_per_query,
        )
    triplets.fingerprint = fingerprint
    if triplets.stream is None:
        check_data_unchanged(data_args, triplets)
    set_source_instructions(triplets, data_args.instructions_per_source)
    if data_args.weights_per_source:
        set_source_weights(triplets, data_args.weights_per_source)
    if data_args.max_train_samples:
        triplets.keep_first(data_args.max_train_samples)
    return triplets


def check_data_unchanged(data_args: DataArguments, triplets: Triplets) -> None:
    """The training files still hold the data the rows were read from (`Triplets.fingerprint`): files edited while
    they were loaded, or while a streamed run read them, would have the run record data it did not train on."""
    if triplets.fingerprint is not None and fingerprint_files(data_args.train_data) != triplets.fingerprint:
        when = "during training" if triplets.stream is not None else "as it was loaded"
        raise TripletDataError(
            f"{data_args.train_data} changed while this run read it ({when}), "
            "so its rows mix the old data and the new; leave the training files as they are while a run reads them, "
            "and run again (a streamed run's checkpoints hold the old data: start it anew, without --resume)."
        )
