"""Hard-negative mining (`python mine.py`, poolattn.training.mining): the true nearest non-positive documents, margins
and ranks by hand, and a mined folder that trains as it is."""

import json

import numpy as np
import pytest
from conftest import TRIPLETS, tiny_model

from poolattn import cli
from poolattn.prompts import instruction_prompt
from poolattn.training.data import load_triplets
from poolattn.training.mining import PROVENANCE_FILE, MiningError, MiningSettings, TextEncoder, mine_source


def hand_encoder(vectors: dict[str, list[float]]):
    def encode(texts, *, queries, instructions=None):
        embeddings = np.array([vectors[text] for text in texts], dtype=np.float32)
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    return encode


def unit(similarity: float) -> list[float]:
    """A 2-D unit vector whose cosine with (1, 0) is `similarity`."""
    return [similarity, float(np.sqrt(1 - similarity**2))]


ROWS = [
    {"query": "q", "positive": "p", "negatives": [], "instruction": None},
    {"query": "r", "positive": "x", "negatives": ["given"], "instruction": None},
]
VECTORS = {
    "q": unit(1.0),
    "p": unit(0.9),
    "a": unit(0.89),
    "b": unit(0.7),
    "c": unit(0.5),
    "given": unit(0.1),
    "r": [-1.0, 0.0],
    "x": unit(-0.95),
}


def corpus_rows():
    # the corpus is every positive and given negative of the source: add a, b, c as positives of other queries
    extra = [{"query": f"z{text}", "positive": text, "negatives": [], "instruction": None} for text in "abc"]
    return ROWS + extra, {**VECTORS, **{f"z{text}": [0.0, 1.0] for text in "abc"}}


@pytest.mark.parametrize(
    "settings, expected",
    [
        (MiningSettings(num_negatives=2, relative_margin=None), ["a", "b"]),  # the nearest two besides p and q
        (MiningSettings(num_negatives=2, relative_margin=0.05), ["b", "c"]),  # 0.89 > 0.9 x 0.95 = 0.855: a is skipped
        (MiningSettings(num_negatives=2, relative_margin=None, absolute_margin=0.25), ["c", "given"]),  # <= 0.65 only
        (MiningSettings(num_negatives=1, relative_margin=None, range_min=1), ["b"]),  # ranks: a 0, b 1, c 2
        (MiningSettings(num_negatives=3, relative_margin=None, range_max=2), ["a", "b"]),  # only a and b in the window
    ],
)
def test_margins_and_ranks_by_hand(settings, expected):
    rows, vectors = corpus_rows()
    mined, report = mine_source(rows, hand_encoder(vectors), settings, "hand")
    assert mined[0]["negative"] == expected and mined[0]["query"] == "q" and mined[0]["positive"] == "p"
    assert report.corpus == 6  # the positives p, x, a, b, c and the given negative


def test_given_negatives_are_kept_first_unless_replaced():
    rows, vectors = corpus_rows()
    rows[0] = {**rows[0], "negatives": ["c"]}
    settings = MiningSettings(num_negatives=2, relative_margin=None)
    kept, _ = mine_source(rows, hand_encoder(vectors), settings, "h")
    assert kept[0]["negative"] == ["c", "a"]
    settings.replace_given = True
    replaced, _ = mine_source(rows, hand_encoder(vectors), settings, "h")
    assert replaced[0]["negative"] == ["a", "b"]


def test_a_real_model_mines_the_true_nearest_non_positive_documents(tmp_path):
    tiny_model("llama", 5, seed=3).save_pretrained(tmp_path / "model")
    rows = [
        {"query": row["query"], "positive": row["positive"], "negatives": [], "instruction": None} for row in TRIPLETS
    ]
    encoder = TextEncoder(str(tmp_path / "model"), batch_size=4, query_instruction="find the passage")
    mined, _ = mine_source(rows, encoder, MiningSettings(num_negatives=3, relative_margin=None, range_max=20), "t")
    # brute force over the same embeddings: cosine of every query with every positive, best first
    corpus = [row["positive"] for row in rows]
    similarity = encoder([row["query"] for row in rows], queries=True) @ encoder(corpus, queries=False).T
    for index, row in enumerate(mined):
        order = [corpus[j] for j in np.argsort(-similarity[index], kind="stable") if corpus[j] != row["positive"]]
        assert row["negative"] == order[:3]


def test_no_positive_of_a_query_is_mined_as_its_negative():
    """A query with several positives (rows that repeat it): each of its positives is relevant to it, so none is a
    negative of any of its rows, however close; ranks count the documents other than the query and its positives."""
    rows = [
        {"query": "q", "positive": "p", "negatives": [], "instruction": None},
        {"query": "q", "positive": "p2", "negatives": [], "instruction": None},
        {"query": "zb", "positive": "b", "negatives": [], "instruction": None},
        {"query": "zc", "positive": "c", "negatives": [], "instruction": None},
    ]
    vectors = {"q": unit(1.0), "p": unit(0.9), "p2": unit(0.8), "b": unit(0.7), "c": unit(0.5)}
    vectors |= {"zb": [0.0, 1.0], "zc": [0.0, 1.0]}
    settings = MiningSettings(num_negatives=2, relative_margin=None, range_max=2)
    mined, _ = mine_source(rows, hand_encoder(vectors), settings, "hand")
    assert [row["negative"] for row in mined[:2]] == [["b", "c"], ["b", "c"]]  # p2 (0.8) and p (0.9) left out


def test_a_real_model_mines_the_nearest_documents_that_are_none_of_the_querys_positives(tmp_path):
    """Brute force over the same embeddings: each query's cosine with every corpus text, best first, without the
    query and every positive of it (TRIPLETS' negatives as second positives of the same queries)."""
    tiny_model("llama", 5, seed=3).save_pretrained(tmp_path / "model")
    rows = [
        {"query": row["query"], "positive": text, "negatives": [], "instruction": None}
        for row in TRIPLETS
        for text in (row["positive"], row["negative"])
    ]
    encoder = TextEncoder(str(tmp_path / "model"), batch_size=4, query_instruction="find the passage")
    settings = MiningSettings(num_negatives=3, relative_margin=None, range_max=20)
    mined, _ = mine_source(rows, encoder, settings, "t")
    corpus = list(dict.fromkeys(row["positive"] for row in rows))
    similarity = encoder([row["query"] for row in rows], queries=True) @ encoder(corpus, queries=False).T
    for index, row in enumerate(mined):
        own = {other["positive"] for other in rows if other["query"] == row["query"]}
        order = [corpus[j] for j in np.argsort(-similarity[index], kind="stable") if corpus[j] not in own]
        assert row["negative"] == order[:3]
        assert not own & set(row["negative"])


def test_each_query_is_encoded_with_its_rows_instruction_as_training_formats_it(tmp_path, monkeypatch):
    """A row's own instruction wins, `--query_instruction` is the fallback (as in training's collator), each in the
    e5 prompt format; batches that mix prompts give each query what encoding it alone with its prompt gives."""
    tiny_model("llama", 5, seed=3).save_pretrained(tmp_path / "model")
    instructions = ["find the passage", None, "what is the answer"] * 4
    rows = [
        {"query": row["query"], "positive": row["positive"], "negatives": [], "instruction": instruction}
        for row, instruction in zip(TRIPLETS, instructions)
    ]
    encoder = TextEncoder(str(tmp_path / "model"), batch_size=4, query_instruction="search the index")
    model, prompts = encoder.poolattn, []
    encode = model.encode
    monkeypatch.setattr(
        model, "encode", lambda texts, **kwargs: prompts.append(kwargs["prompt"]) or encode(texts, **kwargs)
    )
    mine_source(rows, encoder, MiningSettings(num_negatives=1, relative_margin=None), "t")
    expected = [instruction_prompt(instruction or "search the index") for instruction in instructions]
    assert prompts == [expected, None]  # the queries, then the corpus
    assert expected[:2] == ["Instruct: find the passage\nQuery: ", "Instruct: search the index\nQuery: "]
    mined = encoder([row["query"] for row in rows], queries=True, instructions=instructions)
    for row, prompt, embedding in zip(rows, expected, mined):
        alone = encode([row["query"]], prompt=prompt, normalize=True)[0]
        np.testing.assert_allclose(embedding, alone, atol=1e-5)


def test_queries_are_encoded_with_the_instructions_training_gives_them(tmp_path, monkeypatch):
    """`--source_instructions` as train.py's (the small preset gives every shared source one): a row's own
    instruction, else its source's (by file stem, or by a `[k negatives]` part's name), else `--query_instruction`.
    The query tokens mining encodes equal those of training's collator, row by row."""
    from poolattn import PoolAttnEmbeddingModel
    from poolattn.modeling_poolattn import tokenize_for_embedding
    from poolattn.training.collator import TripletCollator
    from poolattn.training.data import set_source_instructions

    data = tmp_path / "data"
    data.mkdir()
    first = [{**row, "instruction": "own one"} if index == 0 else row for index, row in enumerate(TRIPLETS[:6])]
    second = [
        row if index < 2 else {"query": row["query"], "positive": row["positive"]}
        for index, row in enumerate(TRIPLETS[6:])
    ]
    for name, rows in (("a", first), ("b", second)):  # b: a [1 negative] and a [0 negatives] part
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "model")
    instructions = {"a": "find the passage", "b [0 negatives]": "match the text"}  # b [1 negative]: the fallback
    encoded, encode = {}, PoolAttnEmbeddingModel.encode

    def recording(self, texts, **kwargs):
        if kwargs["prompt"] is not None:  # the queries
            encoded.update(zip(texts, kwargs["prompt"]))
        return encode(self, texts, **kwargs)

    monkeypatch.setattr(PoolAttnEmbeddingModel, "encode", recording)
    arguments = ["--train_data", str(data), "--model", str(tmp_path / "model"), "--output", str(tmp_path / "mined")]
    assert (
        cli.mine(arguments + ["--query_instruction", "search", "--source_instructions", json.dumps(instructions)]) == 0
    )
    triplets = load_triplets(str(data))
    set_source_instructions(triplets, instructions)
    collator = TripletCollator(
        model.get_tokenizer(),
        query_max_length=64,
        document_max_length=64,
        add_eos=False,
        query_instruction="search",
        source_instructions=[source.instruction for source in triplets.sources],
    )
    queries = collator(triplets.rows)["queries"]
    texts = [row["query"] for row in triplets.rows]
    mined = tokenize_for_embedding(
        collator.tokenizer, texts, prompt=[encoded[text] for text in texts], max_length=64, add_eos=False
    )
    for features, ids, mask in zip(mined, queries["input_ids"], queries["attention_mask"]):
        assert features["input_ids"] == ids[mask.bool()].tolist()
    assert [encoded[row["query"]] for row in TRIPLETS[:2]] == [
        instruction_prompt(text) for text in ("own one", "find the passage")
    ]
    assert {encoded[row["query"]] for row in TRIPLETS[6:]} == {
        instruction_prompt("search"),
        instruction_prompt("match the text"),
    }
    provenance = json.loads((tmp_path / "mined" / PROVENANCE_FILE).read_text())
    assert provenance["settings"]["source_instructions"] == instructions
    with pytest.raises(SystemExit, match="is no source of"):
        cli.mine(arguments[:-1] + [str(tmp_path / "m2"), "--source_instructions", '{"c": "x"}'])
    with pytest.raises(SystemExit, match="is not valid JSON"):
        cli.mine(arguments[:-1] + [str(tmp_path / "m2"), "--source_instructions", "{a"])


def test_mine_writes_a_folder_that_trains_as_it_is(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS))
    (data / "b.jsonl").write_text(
        "".join(json.dumps({"query": row["positive"], "positive": row["query"]}) + "\n" for row in TRIPLETS)
    )
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    arguments = [
        "--train_data",
        str(data),
        "--model",
        str(tmp_path / "model"),
        "--output",
        str(tmp_path / "mined"),
        "--num_negatives",
        "2",
        "--relative_margin",
        "-1",
    ]
    assert cli.mine(arguments) == 0
    provenance = json.loads((tmp_path / "mined" / PROVENANCE_FILE).read_text())
    assert [source["name"] for source in provenance["sources"]] == ["a", "b"]
    assert provenance["settings"]["num_negatives"] == 2 and provenance["settings"]["relative_margin"] is None
    assert len(provenance["model_fingerprint"]) >= 8
    triplets = load_triplets(str(tmp_path / "mined"), negatives_per_query=2)  # _provenance.json is passed over
    assert [(source.name, source.examples, source.negatives_per_query) for source in triplets.sources] == [
        ("a", 12, 2),
        ("b", 12, 2),
    ]
    a_rows = [row for row in triplets.rows if row["source"] == 0]
    assert [row["negatives"][0] for row in a_rows] == [row["negative"] for row in TRIPLETS]  # given ones first
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        cli.mine(arguments)


@pytest.mark.parametrize("layout", ["dataset repository", "file named _"])
def test_a_mined_folder_reads_back_under_the_sources_training_names(tmp_path, layout):
    """A local dataset repository (as a Hub id: one source per subset) was written as `__tmp__...__a[train].jsonl`,
    which training's folder reader left out (`_` names, as `_provenance.json`): "no data files". Its subsets, and a
    file named `_x.jsonl`, now read back with the input's sources, rows and negatives."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for name, rows in (("a", TRIPLETS[:6]), ("b", TRIPLETS[6:])):
        (repo / "data" / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    configs = "".join(f"- config_name: {n}\n  data_files:\n  - split: train\n    path: data/{n}.jsonl\n" for n in "ab")
    (repo / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    data = repo if layout == "dataset repository" else (tmp_path / "_x.jsonl")
    if layout == "file named _":
        data.write_text((repo / "data" / "a.jsonl").read_text())
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    arguments = ["--train_data", str(data), "--model", str(tmp_path / "model"), "--output", str(tmp_path / "mined")]
    assert cli.mine(arguments + ["--num_negatives", "2", "--relative_margin", "-1"]) == 0
    given, mined = load_triplets(str(data)), load_triplets(str(tmp_path / "mined"), negatives_per_query=2)
    expected = ["a", "b"] if layout == "dataset repository" else ["x"]
    assert [source.name for source in given.sources] == (expected if len(expected) == 2 else ["_x"])
    assert [(source.name, source.examples, source.negatives_per_query) for source in mined.sources] == [
        (name, 6, 2) for name in expected
    ]
    assert sorted((row["query"], row["positive"], row["negatives"][0]) for row in mined.rows) == sorted(
        (row["query"], row["positive"], row["negatives"][0]) for row in given.rows
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        (MiningSettings(num_negatives=0), "--num_negatives 0"),
        (MiningSettings(range_min=5, range_max=5), "need 0 <= range_min < range_max"),
        (MiningSettings(relative_margin=1.5), "--relative_margin 1.5"),
        (MiningSettings(absolute_margin=-0.1), "--absolute_margin -0.1"),
        (MiningSettings(batch_size=0), "--batch_size 0: give the texts per encode batch"),  # range() arg 3, mid-run
    ],
)
def test_bad_settings_are_refused_before_any_encoding(settings, message):
    with pytest.raises(MiningError, match=message):
        settings.check()


@pytest.mark.parametrize(
    "settings, flag",
    [
        (MiningSettings(query_instruction="Retrieve relevant passages"), "--query_instruction"),
        (MiningSettings(source_instructions={"data": "Retrieve relevant passages"}), "--source_instructions"),
    ],
)
def test_a_query_instruction_for_a_model_that_would_not_use_it_is_refused(
    tiny_backbone_folder, tmp_path, settings, flag
):
    """A sentence-transformers model (here a bare backbone, which it mean-pools) encoded the queries without the
    instruction, and the provenance recorded the instruction as if it had been used."""
    from poolattn.training.mining import mine_hard_negatives

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS))
    with pytest.raises(MiningError, match=rf"{flag}: .* is not a poolattn folder"):
        mine_hard_negatives(
            str(tmp_path / "data.jsonl"), tiny_backbone_folder, output=tmp_path / "m", settings=settings
        )
    assert not (tmp_path / "m").exists()


def test_a_mining_run_killed_midway_leaves_no_partial_training_folder(tmp_path, monkeypatch):
    """Sources are mined into a temp folder swapped in at the end: a kill after the first source leaves no output
    folder (so nothing trains on the sources that survived), only a temp folder the next run removes."""
    from poolattn.training import mining

    data = tmp_path / "data"
    data.mkdir()
    for name in ("first", "second"):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS[:6]))
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    original, calls = mining.mine_source, []

    def killed_on_the_second(rows, encoder, settings, name, *args):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(rows, encoder, settings, name, *args)

    monkeypatch.setattr(mining, "mine_source", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        mining.mine_hard_negatives(
            str(data), str(tmp_path / "model"), output=tmp_path / "mined", settings=MiningSettings(num_negatives=1)
        )
    assert not (tmp_path / "mined").exists()
    monkeypatch.setattr(mining, "mine_source", original)
    run = mining.mine_hard_negatives(
        str(data), str(tmp_path / "model"), output=tmp_path / "mined", settings=MiningSettings(num_negatives=1)
    )
    assert sorted(path.name for path in (tmp_path / "mined").iterdir()) == [
        PROVENANCE_FILE,
        "first.jsonl",
        "second.jsonl",
    ]
    assert [source.name for source in run.sources] == ["first", "second"]
    assert not list(tmp_path.glob(".mined.tmp-*"))


def test_a_file_split_by_negative_count_is_mined_back_in_its_own_order(tmp_path):
    """Training keeps a file's rows with 1 and with 0 hard negatives as two sources (a batch holds one count); the
    mined file came back grouped by that count, so row N of the output was no longer row N of the input."""
    rows = [
        {"query": row["query"], "positive": row["positive"], **({"negative": row["negative"]} if i % 3 else {})}
        for i, row in enumerate(TRIPLETS)
    ]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert len(load_triplets(str(tmp_path / "mixed.jsonl")).sources) == 2  # the split this is about
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    arguments = ["--train_data", str(tmp_path / "mixed.jsonl"), "--model", str(tmp_path / "model")]
    assert cli.mine([*arguments, "--output", str(tmp_path / "mined"), "--num_negatives", "2"]) == 0
    mined = [json.loads(line) for line in (tmp_path / "mined" / "mixed.jsonl").read_text().splitlines()]
    assert [(row["query"], row["positive"]) for row in mined] == [(row["query"], row["positive"]) for row in rows]
    assert all("line" not in row for row in mined)
    given_first = [out["negative"][0] for out, row in zip(mined, rows) if "negative" in row]
    assert given_first == [row["negative"] for row in rows if "negative" in row]  # each row's own given one first
