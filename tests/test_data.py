"""Training data of many sources: per-source hard negatives (several per query), one source per batch through the real
Trainer (and its resume), and no false negatives in a batch (the loss masks duplicates of a query's positive)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TRIPLETS
from safetensors.torch import load_file
from test_training import TINY_RUN, tiny_peft_trainer

from poolattn import training
from poolattn.manifest import TrainingManifest
from poolattn.training.batching import SourceBatchSampler, SourceBatchStream, stream_triplets
from poolattn.training.collator import TripletCollator
from poolattn.training.data import load_triplets, set_source_weights, text_id
from poolattn.training.losses import contrastive_loss
from poolattn.training.sources import TripletDataError, fingerprint_files
from poolattn.training.trainer import ContrastiveTrainer, ContrastiveTrainingArguments

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def two_sources(folder: Path) -> Path:
    """12 rows with hard negatives (a.jsonl) and 8 without (b.jsonl), with texts that name their source."""
    write_jsonl(folder / "a.jsonl", [{**row, "query": f"a {row['query']}"} for row in TRIPLETS])
    write_jsonl(
        folder / "b.jsonl",
        [{"query": f"b {row['query']}", "positive": row["positive"], "negative": ""} for row in TRIPLETS[:8]],
    )
    return folder


# -- sources and hard negatives --------------------------------------------------------------------------------------


def test_the_shared_training_folder_loads_as_six_sources_with_their_own_negatives():
    if not SHARED_TRAIN.is_dir():
        pytest.skip("../shared/data/train is not beside this checkout")
    triplets = load_triplets(str(SHARED_TRAIN))
    by_name = {source.name: source for source in triplets.sources}
    lines = {path.stem: sum(1 for line in path.open() if line.strip()) for path in SHARED_TRAIN.glob("*.jsonl")}
    per_file = {}
    for name, source in by_name.items():
        per_file[name.split(" [")[0]] = per_file.get(name.split(" [")[0], 0) + source.examples + source.skipped
    assert per_file == lines and triplets.skipped == 0  # every row of every file is kept
    # SNLI, WikiQA and TrecQA have rows without a wrong answer / contradiction: those train as their own sources
    assert {name: source.negatives_per_query for name, source in by_name.items()} == {
        "msmarco_nq_samples": 1,
        "msrp_paraphrases": 0,
        "quora_duplicates": 0,
        "snli_triplets [1 negative]": 1,
        "snli_triplets [0 negatives]": 0,
        "trecqa_triplets [1 negative]": 1,
        "trecqa_triplets [0 negatives]": 0,
        "wikiqa_triplets [1 negative]": 1,
        "wikiqa_triplets [0 negatives]": 0,
    }
    for row in triplets.rows:
        assert len(row["negatives"]) == triplets.sources[row["source"]].negatives_per_query


def test_several_negatives_per_query_are_kept_and_checked_per_source(tmp_path):
    data = write_jsonl(
        tmp_path / "d" / "lists.jsonl",
        [
            {"query": "q1", "positive": "p1", "negative": ["n1", "n2", "n3"]},
            {"query": "q2", "positive": "p2", "negative": ["m1", "m2"]},
        ],
    )
    assert [row["negatives"] for row in load_triplets(str(data), negatives_per_query=2).rows] == [
        ["n1", "n2"],
        ["m1", "m2"],
    ]
    assert [row["negatives"] for row in load_triplets(str(data), negatives_per_query=0).rows] == [[], []]
    split = load_triplets(str(data), negatives_per_query=3)  # row 2 has only 2: a source of its own
    assert [(source.name, source.examples, source.negatives_per_query) for source in split.sources] == [
        ("lists [3 negatives]", 1, 3),
        ("lists [2 negatives]", 1, 2),
    ]
    assert split.negatives_per_query == 3 and [row["source"] for row in split.rows] == [0, 1]
    bad = write_jsonl(tmp_path / "d" / "bad.jsonl", [{"query": "q", "positive": "p", "negative": ["n", 3]}])
    with pytest.raises(
        TripletDataError,
        match=r"bad.jsonl, row 1: field 'negative' must be a string or a list of "
        "non-empty strings",
    ):
        load_triplets(str(bad))
    skipped = load_triplets(str(data.parent), skip_invalid=True)  # bad.jsonl's one row skipped, counted
    assert skipped.skipped == 1 and [source.name for source in skipped.sources] == ["lists"]


def test_k_negatives_reach_the_loss_and_the_manifest(tiny_backbone_folder, tmp_path):
    rows = [
        {
            "query": row["query"],
            "positive": row["positive"],
            "negative": [row["negative"], f"another {row['negative']}"],
        }
        for row in TRIPLETS
    ]
    data = write_jsonl(tmp_path / "two_negatives.jsonl", rows)
    exported = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            str(data),
            "--negatives_per_query",
            "2",
            "--output_dir",
            str(tmp_path / "out"),
            *TINY_RUN,
            "--max_steps",
            "1",
        ]
    )[0]
    manifest = TrainingManifest.read(exported)
    assert manifest.contrastive_batch.candidates_per_query == 4 * 3  # 4 queries: 4 positives + 8 negatives
    assert manifest.contrastive_batch.negatives_per_query == 2 and manifest.data.negatives_per_query == 2
    from transformers import AutoTokenizer

    collator = TripletCollator(
        AutoTokenizer.from_pretrained(tiny_backbone_folder), query_max_length=32, document_max_length=32, add_eos=True
    )
    batch = collator(load_triplets(str(data), negatives_per_query=2).rows[:4])
    assert batch["documents"]["input_ids"].shape[0] == 12 and batch["text_ids"]["documents"].shape == (12,)


def test_source_instructions_reach_each_sources_queries_and_the_manifest(tiny_backbone_folder, tmp_path):
    from transformers import AutoTokenizer

    from poolattn.modeling_poolattn import tokenize_for_embedding
    from poolattn.prompts import instruction_prompt
    from poolattn.training.data import set_source_instructions

    folder = two_sources(tmp_path / "d")
    rows = json.loads((folder / "a.jsonl").read_text().splitlines()[0])
    write_jsonl(
        folder / "a.jsonl",
        [{**rows, "instruction": "Own instruction"}]
        + [json.loads(line) for line in (folder / "a.jsonl").read_text().splitlines()[1:]],
    )
    triplets = load_triplets(str(folder))
    set_source_instructions(triplets, {"a": "Find the answer", "b": "Find the paraphrase"})
    assert [source.instruction for source in triplets.sources] == ["Find the answer", "Find the paraphrase"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_folder)
    collator = TripletCollator(
        tokenizer,
        query_max_length=64,
        document_max_length=32,
        add_eos=True,
        query_instruction="Global fallback",
        source_instructions=[source.instruction for source in triplets.sources],
    )
    first_a, second_a = triplets.rows[0], triplets.rows[1]
    first_b = next(row for row in triplets.rows if row["source"] == 1)
    for row, instruction in (
        (first_a, "Own instruction"),
        (second_a, "Find the answer"),
        (first_b, "Find the paraphrase"),
        ({**first_b, "source": None}, "Global fallback"),
    ):
        expected = tokenize_for_embedding(
            tokenizer, [row["query"]], prompt=instruction_prompt(instruction), max_length=64, add_eos=True
        )
        batch = collator([row])["queries"]
        assert batch["input_ids"][0].tolist() == expected[0]["input_ids"], instruction
    with pytest.raises(
        TripletDataError,
        match=r"--source_instructions names 'c', which is no source of .* "
        r"Sources there: a, b",
    ):
        set_source_instructions(load_triplets(str(folder)), {"c": "x"})
    exported = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            str(folder),
            "--output_dir",
            str(tmp_path / "out"),
            *TINY_RUN,
            "--max_steps",
            "1",
            "--source_instructions",
            json.dumps({"b": "Find the paraphrase"}),
        ]
    )[0]
    recorded = {source["name"]: source["instruction"] for source in TrainingManifest.read(exported).data.sources}
    assert recorded == {"a": None, "b": "Find the paraphrase"}


def test_an_instruction_that_leaves_the_query_no_token_is_refused_before_training(tiny_backbone_folder, tmp_path):
    """Each distinct instruction the rows use (a row's own, a source's, --query_instruction) is checked against
    --query_max_length before training: one that left the query no token failed in the collator mid-run, after
    checkpoints were written. Max lengths below 1 are refused when parsed."""
    for flag, value in (("--query_max_length", "0"), ("--document_max_length", "-5")):
        with pytest.raises(ValueError, match=rf"{flag} {value}: give the tokens per text, >= 1"):
            training.parse_arguments([flag, value])
    folder = two_sources(tmp_path / "d")
    b_rows = [json.loads(line) for line in (folder / "b.jsonl").read_text().splitlines()]
    # "Instruct:", the words, "Query:", BOS and EOS: 15 tokens leave the query 1 of 16, 16 leave none
    fits, too_long = " ".join(["find"] * 11), " ".join(["find"] * 12)
    write_jsonl(folder / "b.jsonl", [*b_rows[:5], {**b_rows[5], "instruction": too_long}, *b_rows[6:]])
    output = tmp_path / "out"
    common = ["--backbone", tiny_backbone_folder, "--train_data", str(folder), "--output_dir", str(output)]
    common += [*TINY_RUN, "--max_steps", "1", "--query_max_length", "16"]
    fix = r"; raise --query_max_length above 16 or shorten the instruction\."
    a_fits = ["--source_instructions", json.dumps({"a": fits})]
    with pytest.raises(training.TrainingSetupError, match=r"row of b \(query 'b what is the market'\): 16 tokens"):
        training.main([*common, *a_fits, "--query_instruction", fits])
    write_jsonl(folder / "b.jsonl", b_rows)
    for flags, origin in (
        (["--source_instructions", json.dumps({"a": fits, "b": too_long})], "--source_instructions' .* for b"),
        ([*a_fits, "--query_instruction", too_long], "--query_instruction"),
    ):
        with pytest.raises(
            training.TrainingSetupError, match=rf"--query_max_length 16 .* of {origin}: 16 tokens.*{fix}"
        ):
            training.main([*common, *flags])
    with pytest.raises(training.TrainingSetupError, match=r"--document_max_length 2 .* the tokenizer's 2 special"):
        training.main([*common, "--document_max_length", "2"])
    assert not output.exists()
    training.main([*common, *a_fits, "--query_instruction", fits])  # one token of room is enough


# -- one source per batch --------------------------------------------------------------------------------------------


def test_every_batch_of_the_sampler_comes_from_one_source():
    sources = [0] * 50 + [1] * 23 + [2] * 3  # source 2 is smaller than a batch: it gives no batch
    sampler = SourceBatchSampler(sources, 8, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 6 * 8 + 2 * 8 and len(set(order)) == len(order)
    batches = [order[start : start + 8] for start in range(0, len(order), 8)]
    assert all(len({sources[i] for i in batch}) == 1 for batch in batches)
    assert sorted({sources[batch[0]] for batch in batches}) == [0, 1]
    assert list(SourceBatchSampler(sources, 8, seed=1)) == order  # the same seed, the same order
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new shuffle each epoch
    # Under DDP the loader cuts per-device batches of 4 and process r takes every 2nd: both processes of a step read
    # the same 8-row block, so the step's global batch is of one source.
    per_device = [order[start : start + 4] for start in range(0, len(order), 4)]
    for step in range(len(per_device) // 2):
        rank0, rank1 = per_device[2 * step], per_device[2 * step + 1]
        assert len({sources[i] for i in rank0 + rank1}) == 1


def test_source_weights_set_each_sources_share_of_batches():
    sources = [0] * 80 + [1] * 16  # by size: 10 blocks and 2 of 8 rows
    by_size = SourceBatchSampler(sources, 8, seed=1)
    equal = SourceBatchSampler(sources, 8, seed=1, weights={0: 1, 1: 1})
    left_out = SourceBatchSampler(sources, 8, seed=1, weights={0: 1, 1: 0})
    assert list(SourceBatchSampler(sources, 8, seed=1, weights={0: 10, 1: 2})) == list(by_size)  # same shares
    for sampler, expected in ((equal, {0: 6, 1: 6}), (left_out, {0: 12})):
        order = list(sampler)
        batches = [order[start : start + 8] for start in range(0, len(order), 8)]
        assert len(order) == len(sampler) == 12 * 8 and all(len({sources[i] for i in b}) == 1 for b in batches)
        counts = {}
        for batch in batches:
            counts[sources[batch[0]]] = counts.get(sources[batch[0]], 0) + 1
        assert counts == expected
        assert all(len(set(batch)) == 8 for batch in batches)  # a source used again is reshuffled, not repeated
    # source 1 oversampled 3x: every row of it three times over the epoch, never twice in one pass
    oversampled = [i for i in list(equal) if sources[i] == 1]
    assert sorted(oversampled) == sorted(list(range(80, 96)) * 3)


def test_source_weights_are_checked_against_the_sources(tmp_path):
    folder = two_sources(tmp_path / "d")
    triplets = load_triplets(str(folder))
    set_source_weights(triplets, {"a": 1, "b": 3})
    assert [source.weight for source in triplets.sources] == [1.0, 3.0]
    with pytest.raises(TripletDataError, match=r"gives no weight for b; give every source one"):
        set_source_weights(load_triplets(str(folder)), {"a": 1})
    with pytest.raises(TripletDataError, match=r"--source_weights\['b'\]: give a number >= 0, got -1"):
        set_source_weights(load_triplets(str(folder)), {"a": 1, "b": -1})
    with pytest.raises(TripletDataError, match=r"names 'c', which is no source"):
        set_source_weights(load_triplets(str(folder)), {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match=r"--source_weights sets each source's share .* \(not --streaming\)"):
        training.parse_arguments(["--source_weights", '{"a": 1}', "--streaming", "true", "--max_steps", "2"])


def test_a_file_stems_weight_is_the_files_share_divided_by_its_parts_batches(tmp_path, caplog):
    """`{"a": 1, "b": 1}` where a.jsonl holds a part of 12 rows with a hard negative and one of 3 without: the file's
    parts share its weight by their full batches (the 3-row part gives none, logged, as without weights), so a and b
    get one share each; a part named by itself with fewer rows than a batch is refused, and so is a file none of
    whose parts holds one."""
    from poolattn.training.preflight import check_batches

    folder = two_sources(tmp_path / "d")
    extra = [{"query": f"a plain {row['query']}", "positive": row["positive"], "negative": ""} for row in TRIPLETS[:3]]
    (folder / "a.jsonl").write_text((folder / "a.jsonl").read_text() + "".join(json.dumps(r) + "\n" for r in extra))

    def checked(weights: dict, batch: int = 4):
        _, data_args, training_args = training.parse_arguments(
            [
                "--train_data",
                str(folder),
                "--source_weights",
                json.dumps(weights),
                "--per_device_train_batch_size",
                str(batch),
            ]
        )
        triplets = load_triplets(str(folder))
        set_source_weights(triplets, data_args.weights_per_source)
        check_batches(triplets, data_args, training_args)
        return triplets

    with caplog.at_level("INFO", logger="poolattn"):
        triplets = checked({"a": 1, "b": 1})
    assert [(s.name, s.examples) for s in triplets.sources] == [
        ("a [1 negative]", 12),
        ("a [0 negatives]", 3),
        ("b", 8),
    ]
    assert "give no batch: a [0 negatives]" in caplog.text and "(shared by the parts of a)" in caplog.text
    sources = triplets.source_of_rows()
    groups = {index: source.weight_key for index, source in enumerate(triplets.sources)}
    weights = {index: source.weight for index, source in enumerate(triplets.sources)}
    order = list(SourceBatchSampler(sources, 4, seed=0, weights=weights, weight_groups=groups))
    per_source = [sum(sources[order[start]] == s for start in range(0, len(order), 4)) for s in range(3)]
    assert per_source in ([3, 0, 2], [2, 0, 3])  # 5 blocks, half each (largest remainder), none of 3 rows
    with pytest.raises(
        TripletDataError, match=r"gives weight to a \[0 negatives\], with fewer rows than one batch of 4"
    ):
        checked({"a [1 negative]": 1, "a [0 negatives]": 1, "b": 1})
    checked({"a [1 negative]": 1, "a [0 negatives]": 0, "b": 1})  # a weight of 0 leaves it out
    with pytest.raises(TripletDataError, match=r"gives weight to a, with fewer rows than one batch of 16"):
        checked({"a": 1, "b": 0}, batch=16)
    # --max_train_samples keeps the first rows as read: a source it emptied is named with the cap as the cause
    flags = ["--train_data", str(folder), "--source_weights", '{"a": 1, "b": 1}', "--max_train_samples", "15"]
    _, data_args, training_args = training.parse_arguments([*flags, "--per_device_train_batch_size", "4"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="poolattn"):
        triplets = load_triplets(str(folder))
        triplets.keep_first(15)
    assert "--max_train_samples 15 keeps the first rows as read, of each source: b 0 of 8" in caplog.text
    set_source_weights(triplets, data_args.weights_per_source)
    with pytest.raises(TripletDataError, match=r"gives weight to b, .* after --max_train_samples 15 \(the first"):
        check_batches(triplets, data_args, training_args)


def test_files_of_one_name_in_nested_folders_are_sources_of_their_own(tmp_path):
    """`snli/train.jsonl` and `nq/train.jsonl` (a common layout): sources `nq/train` and `snli/train`, in memory and
    streamed, each addressable by --source_weights (both were `train`)."""
    for folder in ("snli", "nq"):
        write_jsonl(
            tmp_path / "d" / folder / "train.jsonl", [{**row, "query": f"{folder} {row['query']}"} for row in TRIPLETS]
        )
    triplets = load_triplets(str(tmp_path / "d"))
    assert [source.name for source in triplets.sources] == ["nq/train", "snli/train"]
    set_source_weights(triplets, {"nq/train": 1, "snli/train": 0})
    assert [source.weight for source in triplets.sources] == [1.0, 0.0]
    streamed = stream_triplets(str(tmp_path / "d"), batch_size=4, seed=0, buffer_size=8)
    assert [source.name for source in streamed.sources] == ["nq/train", "snli/train"]


def test_the_trainer_draws_each_batch_from_one_source(tiny_backbone_folder, tmp_path):
    import datasets

    triplets = load_triplets(str(two_sources(tmp_path / "data")))
    args = ContrastiveTrainingArguments(
        output_dir=str(tmp_path / "unused"),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        per_device_train_batch_size=4,
        dataloader_drop_last=True,
        seed=3,
    )
    for source_of_rows, expect_mixed in ((triplets.source_of_rows(), False), (None, True)):
        trainer = ContrastiveTrainer(
            model=torch.nn.Linear(1, 1),
            args=args,
            data_collator=lambda rows: rows,
            train_dataset=datasets.Dataset.from_list(triplets.rows),
            source_of_rows=source_of_rows,
        )
        batches = list(trainer.get_train_dataloader())
        mixed = any(len({row["source"] for row in batch}) > 1 for batch in batches)
        assert mixed == expect_mixed and all(len(batch) == 4 for batch in batches)


def test_one_source_batches_resume_after_a_kill_to_the_same_weights(tiny_backbone_folder, tmp_path, monkeypatch):
    data = two_sources(tmp_path / "data")
    common = ["--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", str(data), *TINY_RUN]
    straight = training.main([*common, "--output_dir", str(tmp_path / "straight")])[0]
    manifest = TrainingManifest.read(straight)
    assert manifest.data.batch_sampling == "one_source_per_batch"
    assert [(s["name"], s["examples"], s["negatives_per_query"]) for s in manifest.data.sources] == [
        ("a", 12, 1),
        ("b", 8, 0),
    ]

    original_step = ContrastiveTrainer.training_step

    def crash_after_two_steps(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("simulated kill after checkpoint-2")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        training.main([*common, "--output_dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(ContrastiveTrainer, "training_step", original_step)
    resumed = training.main([*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"])[
        0
    ]
    expected = load_file(straight / "model.safetensors")
    for name, value in load_file(resumed / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_streaming_gives_the_in_memory_batches_for_the_same_seed(tmp_path):
    data = two_sources(tmp_path / "data")
    triplets = load_triplets(str(data))
    in_memory = [triplets.rows[index] for index in SourceBatchSampler(triplets.source_of_rows(), 4, seed=3)]
    files = sorted(data.glob("*.jsonl"))
    streamed = list(SourceBatchStream.of_files(files, 4, seed=3, buffer_size=100, negatives_per_query=1))
    assert streamed == in_memory and len(streamed) == 20  # 3 blocks of a, 2 of b
    small_buffer = list(SourceBatchStream.of_files(files, 4, seed=3, buffer_size=2, negatives_per_query=1))
    assert small_buffer != in_memory and sorted(map(str, small_buffer)) == sorted(map(str, in_memory))
    for start in range(0, 20, 4):  # a small buffer shuffles less, but every batch is still of one source
        assert len({row["source"] for row in small_buffer[start : start + 4]}) == 1


def dataset_repository(folder: Path) -> Path:
    """`two_sources` laid out as a Hub dataset repository: subsets `a` and `b` declared in README.md, and a test split
    of `a` that training must not read."""
    two_sources(folder / "data")
    write_jsonl(folder / "data" / "a_test.jsonl", [{"query": "held out", "positive": "never trained"}])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: a\n  data_files:\n  - split: train\n    path: data/a.jsonl\n"
        "  - split: test\n    path: data/a_test.jsonl\n- config_name: b\n  data_files:\n  - split: train\n"
        "    path: data/b.jsonl\n---\n# two sources\n"
    )
    return folder


def test_a_dataset_repository_of_files_only_its_configs_name_is_fingerprinted_by_every_file(tmp_path):
    """A dataset repository whose configs name a .tsv file (read by `datasets`) was refused by the fingerprint,
    which called the file unreadable, so such data could load but never train; every file but .git/ counts now."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.tsv").write_text("query\tpositive\nq1\tp1\nq2\tp2\n")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.tsv\n"
        '  sep: "\\t"\n---\n'
    )
    assert [row["query"] for row in load_triplets(str(repo)).rows] == ["q1", "q2"]
    before = fingerprint_files(str(repo))
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert fingerprint_files(str(repo)) == before
    (repo / "data" / "train.tsv").write_text("query\tpositive\nq1\tp1\nq3\tp2\n")
    assert fingerprint_files(str(repo)) != before


def test_a_dataset_repository_loads_one_source_per_subset_in_memory_and_streamed(tmp_path):
    repo = dataset_repository(tmp_path / "repo")
    files = [load_triplets(str(repo / "data" / name)) for name in ("a.jsonl", "b.jsonl")]
    triplets = load_triplets(str(repo))  # the Hub's route: datasets reads the declared subsets and splits
    assert [(s.name, s.examples, s.negatives_per_query) for s in triplets.sources] == [("a", 12, 1), ("b", 8, 0)]
    assert [row["query"] for row in triplets.rows] == [row["query"] for part in files for row in part.rows]
    assert "held out" not in {row["query"] for row in triplets.rows}
    in_memory = [triplets.rows[index] for index in SourceBatchSampler(triplets.source_of_rows(), 4, seed=3)]
    streamed = stream_triplets(str(repo), batch_size=4, seed=3, buffer_size=100)
    assert [(s.name, s.examples, s.negatives_per_query) for s in streamed.sources] == [("a", 12, 1), ("b", 8, 0)]
    assert list(streamed.stream) == in_memory and len(in_memory) == 20
    held_out = load_triplets(str(repo), split="test")  # subset b has no test split: left out
    assert [(s.name, s.examples) for s in held_out.sources] == [("a", 1)] and held_out.rows[0]["query"] == "held out"
    with pytest.raises(
        TripletDataError,
        match=r"no subset has a 'dev' split \(subsets and their splits: a: train, "
        r"test; b: train\); give one with --data_split",
    ):
        load_triplets(str(repo), split="dev")


def test_a_hub_id_that_cannot_be_loaded_says_what_is_accepted(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network wait: read when imported, not from env
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in (load_triplets, lambda source: stream_triplets(source, batch_size=4, seed=0, buffer_size=10)):
        with pytest.raises(
            TripletDataError,
            match=r"no-such-org/no-such-data: not a local file or folder, and "
            r"loading it as a Hub dataset failed .* a Hub dataset id",
        ):
            load("no-such-org/no-such-data")


def test_a_streamed_run_trains_the_weights_of_the_in_memory_run(tiny_backbone_folder, tmp_path):
    data = two_sources(tmp_path / "data")
    # no dropout: what is compared is the batches, not the random streams of two loaders
    common = [
        "--variant",
        "5",
        "--backbone",
        tiny_backbone_folder,
        "--train_data",
        str(data),
        *TINY_RUN,
        "--lora_dropout",
        "0",
    ]
    in_memory = training.main([*common, "--output_dir", str(tmp_path / "memory")])[0]
    streamed = training.main([*common, "--streaming", "true", "--output_dir", str(tmp_path / "stream")])[0]
    manifest = TrainingManifest.read(streamed)
    assert manifest.data.streaming and manifest.data.examples == 20 and manifest.global_steps == 4
    # the Hub's route (datasets streaming each subset), from a dataset repository holding the same two sources
    repo = dataset_repository(tmp_path / "repo")
    common_repo = [str(repo) if flag == str(data) else flag for flag in common]
    streamed_hub = training.main([*common_repo, "--streaming", "true", "--output_dir", str(tmp_path / "hub")])[0]
    assert [source["name"] for source in TrainingManifest.read(streamed_hub).data.sources] == ["a", "b"]
    expected = load_file(in_memory / "model.safetensors")
    for folder in (streamed, streamed_hub):
        for name, value in load_file(folder / "model.safetensors").items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="--streaming reads each source in turn"):
        training.main(
            [*common, "--streaming", "true", "--max_train_samples", "5", "--output_dir", str(tmp_path / "x")]
        )


def test_a_streamed_run_killed_in_its_second_pass_resumes_to_the_uninterrupted_weights(
    tiny_backbone_folder, tmp_path, monkeypatch
):
    """Two sources of 5 batches of 4 in all, 8 steps: the stream runs out after step 5 and starts its second pass
    (seed + 1). Killed after checkpoint-6 and resumed, the run trains steps 7-8 on the batches the uninterrupted run
    trains there (no dropout: what is compared is the batches), which also equal the in-memory run's."""
    data = two_sources(tmp_path / "data")
    common = ["--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", str(data), *TINY_RUN]
    common += ["--max_steps", "8", "--lora_dropout", "0", "--streaming", "true"]
    straight = training.main([*common, "--output_dir", str(tmp_path / "straight")])[0]
    in_memory = training.main([*common[:-2], "--output_dir", str(tmp_path / "memory")])[0]
    original_step = ContrastiveTrainer.training_step

    def crash_after_six_steps(self, *args, **kwargs):
        if self.state.global_step == 6:
            raise KeyboardInterrupt("simulated kill after checkpoint-6")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", crash_after_six_steps)
    with pytest.raises(KeyboardInterrupt):
        training.main([*common, "--output_dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(ContrastiveTrainer, "training_step", original_step)
    arguments = [*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"]
    resumed = training.main(arguments)[0]
    assert TrainingManifest.read(resumed).global_steps == 8
    expected = load_file(straight / "model.safetensors")
    for folder in (in_memory, resumed):
        for name, value in load_file(folder / "model.safetensors").items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=f"{folder}: {name}")


def test_data_that_cannot_give_one_source_batches_is_refused_before_training(tiny_backbone_folder, tmp_path):
    data = two_sources(tmp_path / "data")
    with pytest.raises(TripletDataError, match="no source holds a full batch of 16 rows"):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                str(data),
                "--output_dir",
                str(tmp_path / "out"),
                "--per_device_train_batch_size",
                "16",
            ]
        )
    with pytest.raises(ValueError, match="--batch_sampling 'by_source': allowed values are one_source_per_batch"):
        training.parse_arguments(["--batch_sampling", "by_source"])
    assert not (tmp_path / "out").exists()


# -- which files, columns and cells are read -------------------------------------------------------------------------


def write_compressed(path: Path, text: str) -> Path:
    import bz2
    import gzip

    opener = {".gz": gzip.open, ".bz2": bz2.open}[path.suffix]
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


def test_every_data_file_of_a_folder_is_read_whatever_its_suffixs_case_or_compression(tmp_path, caplog):
    """`B.JSONL` and `c.jsonl.gz` beside `a.jsonl` were left out of a folder unsaid (12 rows of 48), while given by
    themselves they were refused; notes and `_provenance.json` stay out, named in the log."""
    folder = tmp_path / "d"
    lines = "".join(json.dumps(row) + "\n" for row in TRIPLETS)
    write_jsonl(folder / "a.jsonl", TRIPLETS)
    (folder / "B.JSONL").write_text(lines)
    write_compressed(folder / "c.jsonl.gz", lines)
    csv_lines = "query,positive,negative\n" + "".join(
        f"{r['query']},{r['positive']},{r['negative']}\n" for r in TRIPLETS
    )
    write_compressed(folder / "d.CSV.bz2", csv_lines)
    for name in ("README.md", "MANIFEST.md", "_provenance.json"):
        (folder / name).write_text("{}")
    with caplog.at_level("INFO", logger="poolattn"):
        triplets = load_triplets(str(folder))
    sizes = {source.name: source.examples for source in triplets.sources}
    assert sizes == {"B": 12, "a": 12, "c": 12, "d": 12} and len(triplets.rows) == 48
    assert triplets.rows[12:24] == [{**row, "source": 1} for row in triplets.rows[:12]]  # B: a's rows, as given
    assert "left out: MANIFEST.md, README.md, _provenance.json" in caplog.text
    streamed = stream_triplets(str(folder), batch_size=4, seed=0, buffer_size=8)
    assert {source.name: source.examples for source in streamed.sources} == sizes
    for name in ("B.JSONL", "c.jsonl.gz", "d.CSV.bz2"):  # given by themselves
        assert len(load_triplets(str(folder / name)).rows) == 12
    for name in ("e.parquet.gz", "f.tsv", "g.jsonl.zip"):  # data the reader cannot take: refused, named
        (folder / name).write_bytes(b"x")
        with pytest.raises(TripletDataError, match=rf"files that look like data but cannot be read: {name}\. Allowed"):
            load_triplets(str(folder))
        (folder / name).unlink()


@pytest.mark.parametrize(
    "column, meant",
    [("negatives", "negative"), ("positives", "positive"), ("anchor", "query"), ("Query", "query")],
)
def test_a_misnamed_column_is_refused_with_the_name_that_is_read(tmp_path, column, meant):
    """`negatives` (a common spelling) was ignored: the run trained on 0 hard negatives, unsaid."""
    rows = [{"query": row["query"], "positive": row["positive"], "negative": [row["negative"]]} for row in TRIPLETS]
    data = write_jsonl(
        tmp_path / "d" / "a.jsonl",
        [{column if key == meant else key: text for key, text in row.items()} for row in rows],
    )
    message = rf"a.jsonl, row 1: column '{column}' is not read; rename it to '{meant}'"
    for skip_invalid in (False, True):  # a source's column, not a bad row
        with pytest.raises(TripletDataError, match=message):
            load_triplets(str(data.parent), skip_invalid=skip_invalid)
    with pytest.raises(TripletDataError, match=message):
        stream_triplets(str(data.parent), batch_size=4, seed=0, buffer_size=8, skip_invalid=True)


def test_negatives_is_refused_before_training_and_unknown_columns_are_named_once(
    tiny_backbone_folder, tmp_path, caplog
):
    rows = [{"query": row["query"], "positive": row["positive"], "negatives": [row["negative"]]} for row in TRIPLETS]
    data = write_jsonl(tmp_path / "negatives.jsonl", rows)
    with pytest.raises(TripletDataError, match=r"column 'negatives' is not read; rename it to 'negative'"):
        training.main(
            ["--backbone", tiny_backbone_folder, "--train_data", str(data), "--output_dir", str(tmp_path / "out")]
        )
    assert not (tmp_path / "out").exists()
    folder = two_sources(tmp_path / "d")  # a column not read: named once per source; `source` (metadata) at info
    write_jsonl(folder / "a.jsonl", [{**row, "score": 1.0, "source": "x"} for row in TRIPLETS])
    with caplog.at_level("INFO", logger="poolattn"):
        triplets = load_triplets(str(folder))
    assert triplets.has_negatives and len(triplets.rows) == 20
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{folder / 'a.jsonl'}: columns not read (training reads query, positive, negative, instruction): score"
    ]
    assert f"{folder / 'a.jsonl'}: columns not read: source" in caplog.text


def test_csv_cells_are_read_as_the_texts_they_hold(tmp_path):
    """pandas' missing-value strings and numbers, behind `datasets`' CSV reader, turned `NA`/`None` negatives into
    none (the row moved to a 0-negatives source), a `null` query into "missing" and `1000` into a number."""
    data = tmp_path / "d" / "cells.csv"
    data.parent.mkdir()
    data.write_text('query,positive,negative\nnull,1000,NA\nNone,"a, b",None\nq3,NaN,\n')
    expected = [
        {"query": "null", "positive": "1000", "instruction": None, "negatives": ["NA"], "source": 0},
        {"query": "None", "positive": "a, b", "instruction": None, "negatives": ["None"], "source": 0},
        {"query": "q3", "positive": "NaN", "instruction": None, "negatives": [], "source": 1},  # "": no negative
    ]
    assert load_triplets(str(data)).rows == expected
    streamed = stream_triplets(str(data.parent), batch_size=1, seed=0, buffer_size=8, skip_invalid=True)
    assert streamed.rows == expected[:2]  # the streamed source has negatives: q3's row is skipped


def test_a_dataset_repository_is_read_as_its_files_hold_now_and_its_csv_cells_as_texts(tmp_path):
    """A local dataset repository (a Hub dataset's layout) goes through `datasets`, which (5.x) cached it under a key
    its files' contents are not part of: an edited file's old rows came back, under the new data fingerprint. And
    its CSV cells went through pandas' missing-value parsing (`NA`, `None`, `null`) that local CSV files are spared."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.csv\n---\n"
    )
    data = repo / "data" / "train.csv"
    data.write_text('query,positive,negative\nnull,1000,NA\nNone,"a, b",None\nq3,NaN,\n')
    assert load_triplets(str(repo)).rows == load_triplets(str(data)).rows  # cells as texts, as in the file route
    before = fingerprint_files(str(repo))
    data.write_text("query,positive\nc,d\ne,f\ng,h\n")  # edited: new rows, another count
    assert fingerprint_files(str(repo)) != before
    assert [row["query"] for row in load_triplets(str(repo)).rows] == ["c", "e", "g"]
    streamed = stream_triplets(str(repo), batch_size=1, seed=0, buffer_size=8)
    assert [source.examples for source in streamed.sources] == [3] and len(list(streamed.stream)) == 3


@pytest.mark.parametrize(
    "name, what",
    [
        ("empty.csv", "a header line alone"),
        ("empty.parquet", "a table of 0 rows"),
        ("empty.jsonl", "blank lines only"),
        ("empty.json", "no rows"),
    ],
)
def test_a_data_file_without_rows_is_refused_by_name(tmp_path, name, what):
    """A header-only CSV or an empty parquet file stopped with a traceback of `datasets`; now every file without rows
    is refused as a 0-byte JSONL is, by itself or in a folder, loaded or streamed."""
    import pyarrow
    import pyarrow.parquet

    two_sources(tmp_path / "d")
    empty = tmp_path / "d" / name
    if name.endswith(".parquet"):
        pyarrow.parquet.write_table(pyarrow.table({"query": pyarrow.array([], pyarrow.string())}), empty)
    else:
        empty.write_text({".csv": "query,positive,negative\n", ".jsonl": "\n\n", ".json": "[]\n"}[empty.suffix])
    for source in (empty, empty.parent):
        with pytest.raises(TripletDataError, match=rf"{empty}: file is empty \({what}\); expected rows with query"):
            load_triplets(str(source))
        with pytest.raises(TripletDataError, match=rf"{empty}: file is empty \({what}\)"):
            stream_triplets(str(source), batch_size=4, seed=0, buffer_size=8)


# -- no false negatives ----------------------------------------------------------------------------------------------


def _masked_loss_against_hand(texts: dict, allowed: dict, document_queries=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`contrastive_loss` with the batch's text ids (3 queries; 3 positives, then 2 negatives, random embeddings),
    asserted equal in value and gradient to each query's softmax over the `allowed` documents by hand; returns the
    masked loss and the loss without ids."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(3, 8, generator=generator, requires_grad=True)
    documents = torch.randn(5, 8, generator=generator, requires_grad=True)
    ids = {
        "queries": torch.tensor([text_id(t) for t in texts["queries"]]),
        "positives": torch.tensor([text_id(t) for t in texts["documents"][:3]]),
        "documents": torch.tensor([text_id(t) for t in texts["documents"]]),
    }
    if document_queries is not None:
        ids["document_queries"] = document_queries
    masked = contrastive_loss(queries, documents, temperature=0.05, gather=False, text_ids=ids)
    masked_gradients = torch.autograd.grad(masked, [queries, documents])
    scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(documents, dim=-1).T / 0.05
    by_hand = torch.stack([torch.logsumexp(scores[i, columns], 0) - scores[i, i] for i, columns in allowed.items()])
    hand_gradients = torch.autograd.grad(by_hand.mean(), [queries, documents])
    torch.testing.assert_close(masked, by_hand.mean(), rtol=0, atol=1e-6)
    for ours, theirs in zip(masked_gradients, hand_gradients):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    return masked.detach(), contrastive_loss(queries, documents, temperature=0.05, gather=False).detach()


def test_a_duplicate_positive_is_not_a_negative_in_value_and_gradient():
    # q0 and q1 share a positive text; the first negative is q2's own text
    texts = {"queries": ["q0", "q1", "q2"], "documents": ["p", "p", "p2", "q2", "n"]}
    masked, unmasked = _masked_loss_against_hand(texts, {0: [0, 2, 3, 4], 1: [1, 2, 3, 4], 2: [0, 1, 2, 4]})
    assert unmasked > masked  # more columns in the softmax: the duplicate was scored as a negative before


def test_another_rows_positive_for_the_same_question_is_not_a_negative():
    """Answer-selection data repeats a question with each correct answer (TrecQA: 316 of 348 rows share theirs):
    in a batch holding two such rows, each row's positive was scored as a negative of the other (a correct answer
    pushed away). The collator marks the query each positive answers; the loss leaves those out, value and gradient
    equal to a softmax over the true negatives by hand. A hard negative of the same question stays a negative."""
    texts = {"queries": ["what is x", "what is x", "q2"], "documents": ["a1", "a2", "p2", "n0", "n1"]}
    owners = torch.tensor([text_id(t) for t in texts["queries"]] + [-1, -1])
    # rows 0 and 1: the other's answer left out; row 2 keeps every document
    _masked_loss_against_hand(texts, {0: [0, 2, 3, 4], 1: [1, 2, 3, 4], 2: [0, 1, 2, 3, 4]}, owners)


def test_the_collator_marks_the_question_each_positive_answers(tiny_backbone_folder):
    from transformers import AutoTokenizer

    rows = [dict(row) for row in TRIPLETS[:3]]
    rows[1]["query"] = rows[0]["query"]
    collator = TripletCollator(
        AutoTokenizer.from_pretrained(tiny_backbone_folder), query_max_length=32, document_max_length=32, add_eos=True
    )
    ids = collator(rows)["text_ids"]
    owners = ids["document_queries"].tolist()
    assert owners[:3] == ids["queries"].tolist() and owners[0] == owners[1]
    assert all(owner == -1 for owner in owners[3:]) and len(owners) == len(ids["documents"])


def test_the_mask_holds_on_the_plain_and_gradcache_paths(tiny_backbone_folder, tmp_path):
    from transformers import AutoTokenizer

    rows = [dict(row) for row in TRIPLETS[:4]]
    rows[1]["positive"] = rows[0]["positive"]  # a duplicate positive inside the batch
    collator = TripletCollator(
        AutoTokenizer.from_pretrained(tiny_backbone_folder), query_max_length=32, document_max_length=32, add_eos=True
    )
    inputs = collator(rows)
    losses, gradients = {}, {}
    for chunk in (0, 3):  # plain backpropagation, then GradCache in chunks of 3 texts; the same initial weights
        trainer, _ = tiny_peft_trainer(tiny_backbone_folder, tmp_path, chunk=chunk)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        losses[chunk] = loss.item()
        gradients[chunk] = {
            name: parameter.grad.clone()
            for name, parameter in trainer.model.named_parameters()
            if parameter.requires_grad
        }
        if chunk == 0:
            trainer.model.zero_grad()
            unmasked = trainer.compute_loss(trainer.model, {key: inputs[key] for key in ("queries", "documents")})
            assert losses[0] < unmasked.item()  # q0's and q1's shared positive no longer counts against the other
    assert losses[3] == pytest.approx(losses[0], abs=1e-5)
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[3][name], gradient, rtol=0, atol=1e-5, msg=name)
