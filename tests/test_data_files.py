"""One training file as a user's real data has it: every fault named with its file and row, JSON and Parquet read from
the file itself (never a cache keyed by its modification time), streamed sources with the hard negatives their rows
have, and the fingerprint a run records taken from the rows it read."""

import gzip
import json
import logging
import os

import pytest
from conftest import TRIPLETS

from poolattn import cli, training
from poolattn.training import batching, training_data
from poolattn.training.batching import SourceBatchStream
from poolattn.training.data import load_triplets
from poolattn.training.recipes import resume_recipe
from poolattn.training.sources import TripletDataError, fingerprint_files


def rows(count: int, negatives: int = 0, prefix: str = "q") -> list[dict]:
    return [
        {"query": f"{prefix}{i}", "positive": f"p{i}", **({"negative": [f"n{i}-{k}" for k in range(negatives)]})}
        if negatives
        else {"query": f"{prefix}{i}", "positive": f"p{i}"}
        for i in range(count)
    ]


def jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (  # a Latin-1 byte in line 151 of 300: named by its line, not by where a decoder's chunk began
            "latin1.jsonl",
            jsonl(rows(150)).encode() + '{"query": "caf\xe9"}\n'.encode("latin1") + jsonl(rows(149)).encode(),
            r"latin1.jsonl, line 151: not UTF-8",
        ),
        ("dup.csv", b"query,positive,negative,negative\nq,p,n1,n2\n", r"names 'negative' more than once"),
        ("short.csv", b"query,positive,negative\nq1,p1\nq2,p2,n2\n", r"short.csv, row 1 \(line 2\): 2 cells"),
        ("cut.jsonl.gz", gzip.compress(jsonl(rows(300)).encode(), mtime=0)[:400], r"cut.jsonl.gz: cannot be read"),
        ("plain.jsonl.gz", jsonl(rows(3)).encode(), r"plain.jsonl.gz: cannot be read \(BadGzipFile"),
        ("comma.json", b'[{"query": "q", "positive": "p"},]', r"comma.json: not valid JSON"),
        ("empty.json", b"[\n]\n", r"empty.json: file is empty \(no rows\)"),  # a folder's file read as 0 rows
        ("blank.jsonl", b" \n" * 3000, r"blank.jsonl: file is empty \(blank lines only\)"),
        ("object.json", b'{"data": [{"query": "q", "positive": "p"}]}', r"object.json: one JSON object \(data\)"),
        ("text.parquet", b"not a parquet file", r"text.parquet: not a readable Parquet file"),
    ],
    ids=lambda value: value if isinstance(value, str) and "." in value and " " not in value else "",
)
def test_a_faulty_file_is_refused_with_its_name_and_row(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TripletDataError, match=message):
        load_triplets(str(tmp_path / name), negatives_per_query=2)


def test_json_forms_and_a_folder_with_another_tools_front_matter_read_as_their_rows(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(rows(3)))
    (tmp_path / "lines.json").write_text(jsonl(rows(4)))
    (tmp_path / "one.json").write_text(json.dumps(rows(1)[0]))
    (tmp_path / "pretty.json").write_text(json.dumps(rows(1)[0], indent=2))
    (tmp_path / "columns.json").write_text(json.dumps({"query": ["a", "b"], "positive": ["c", "d"]}))  # pandas' layout
    names = ("list", "lines", "one", "pretty", "columns")
    assert [len(load_triplets(str(tmp_path / f"{name}.json")).rows) for name in names] == [3, 4, 1, 1, 2]
    (tmp_path / "trailing.csv").write_text("query,positive,,\nq,p,,\n")  # a spreadsheet's empty columns
    assert load_triplets(str(tmp_path / "trailing.csv")).rows[0]["query"] == "q"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "README.md").write_text("---\nTraining data for the configs we ship\n---\n")  # not a dataset card
    (folder / "a.jsonl").write_text(jsonl(rows(5)))
    assert [row["query"] for row in load_triplets(str(folder)).rows] == [f"q{i}" for i in range(5)]


def test_a_file_beside_its_compressed_copy_is_refused_and_a_different_file_of_its_name_kept(tmp_path):
    """`gzip -k x.jsonl` leaves x.jsonl and x.jsonl.gz: every row was trained on twice (two sources); refused naming
    both. A .gz of other rows under that name is data of its own: both are sources."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "x.jsonl").write_text(jsonl(rows(4)))
    (folder / "x.jsonl.gz").write_bytes(gzip.compress(jsonl(rows(4)).encode()))
    with pytest.raises(TripletDataError, match=r"x.jsonl.gz holds the data of x.jsonl \(a compressed copy\)"):
        load_triplets(str(folder))
    (folder / "x.jsonl.gz").write_bytes(gzip.compress(jsonl(rows(3, prefix="other")).encode()))
    assert len(load_triplets(str(folder)).rows) == 7


def test_pandas_json_layouts_and_a_csv_cell_of_several_negatives_read_as_their_rows(tmp_path):
    """pandas' default `to_json` ("columns": an object per column keyed by row) and `to_dict(orient="list")` with a
    negative column read as the records file does; a CSV cell holding a JSON list (what the error for a repeated
    header advises) is that row's negatives, not one negative text; a text in brackets stays a text."""
    import pandas

    records = [
        {"query": "q0", "positive": "p0", "negative": ["n0", "m0"]},
        {"query": "q1", "positive": "p1", "negative": ["n1", "m1"]},
    ]
    frame = pandas.DataFrame(records)
    frame.to_json(tmp_path / "records.json", orient="records")
    frame.to_json(tmp_path / "default.json")
    (tmp_path / "list.json").write_text(json.dumps(frame.to_dict(orient="list")))
    expected = load_triplets(str(tmp_path / "records.json"), negatives_per_query=2).rows
    assert [row["negatives"] for row in expected] == [["n0", "m0"], ["n1", "m1"]]
    for name in ("default", "list"):
        assert load_triplets(str(tmp_path / f"{name}.json"), negatives_per_query=2).rows == expected, name
    (tmp_path / "cells.csv").write_text(
        'query,positive,negative\nq0,p0,"[""n0"", ""m0""]"\nq1,p1,"[""n1"", ""m1""]"\n'
    )
    assert load_triplets(str(tmp_path / "cells.csv"), negatives_per_query=2).rows == expected
    (tmp_path / "text.csv").write_text("query,positive,negative\nq,p,[1] a cited negative\n")
    assert load_triplets(str(tmp_path / "text.csv")).rows[0]["negatives"] == ["[1] a cited negative"]


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_a_file_rewritten_with_the_same_modification_time_is_read_as_it_is_now(tmp_path, suffix):
    """`cp -p`, `rsync -a` or an unpacked archive keep a file's time: `datasets`' cache, keyed by path and time,
    served the old rows under the new file's fingerprint."""
    import pandas

    path = tmp_path / f"data{suffix}"

    def write(prefix: str) -> None:
        frame = pandas.DataFrame(rows(6, prefix=prefix))
        frame.to_json(path, orient="records") if suffix == ".json" else frame.to_parquet(path)
        os.utime(path, (1_700_000_000, 1_700_000_000))

    write("old")
    assert load_triplets(str(path)).rows[0]["query"] == "old0"
    write("new")
    assert [row["query"] for row in load_triplets(str(path)).rows] == [f"new{i}" for i in range(6)]


def test_a_streamed_source_whose_first_rows_mix_negative_counts_is_refused_before_training(tmp_path, caplog):
    """A file whose first rows have 1 hard negative and then 0 (as the shipped snli_triplets.jsonl does): refused
    when the stream is built, naming the row, where it failed once training reached the row; with
    --skip_invalid_rows the skipping is said then, and a pass gives the rows that have one."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(jsonl(rows(6, negatives=1)) + jsonl(rows(2, prefix="r")) + jsonl(rows(4, negatives=1, prefix="s")))
    common = dict(batch_size=2, seed=1, buffer_size=10, negatives_per_query=1)
    with pytest.raises(TripletDataError, match=r"mixed.jsonl, row 7: field 'negative' has 0 hard negative\(s\)"):
        batching.stream_triplets(str(path), **common)
    with caplog.at_level(logging.WARNING, logger="poolattn.training.batching"):
        triplets = batching.stream_triplets(str(path), skip_invalid=True, **common)
    assert "rows short of 1 hard negative(s) (row 7 on) are skipped" in caplog.text
    passed = list(triplets.stream.pass_rows(0))
    assert len(passed) == 10 and all(len(row["negatives"]) == 1 for row in passed)


def test_a_streamed_source_trains_with_the_hard_negatives_its_rows_have(tmp_path, monkeypatch, caplog):
    """Asked for 3 negatives, a file whose rows have 1 streams with 1, as in memory (it was refused: "1 of the 3 this
    source's rows have"); a later row with negatives its first rows lacked is named once in a warning, not dropped
    unsaid; and a first source of no valid row leaves the next source to give the run its first rows."""
    path = tmp_path / "one.jsonl"
    path.write_text(jsonl(rows(8, negatives=1)))
    streamed = list(SourceBatchStream.of_files([path], 4, seed=1, buffer_size=100, negatives_per_query=3))
    in_memory = load_triplets(str(path), negatives_per_query=3)
    assert sorted(map(str, streamed)) == sorted(map(str, in_memory.rows))
    assert {len(row["negatives"]) for row in streamed} == {1}

    monkeypatch.setattr(batching, "PEEK_ROWS", 4)
    late = tmp_path / "late.jsonl"
    late.write_text(jsonl(rows(4)) + jsonl(rows(4, negatives=2, prefix="r")))
    with caplog.at_level(logging.WARNING, logger="poolattn.training.batching"):
        streamed = list(SourceBatchStream.of_files([late], 4, seed=1, buffer_size=100, negatives_per_query=1))
    assert len(streamed) == 8 and caplog.text.count("late.jsonl, row 5: 2 hard negative(s)") == 1

    data = tmp_path / "sources"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl([{"query": "q", "positive": ""}] * 4))  # no valid row
    (data / "b.jsonl").write_text(jsonl(rows(4)))
    triplets = batching.stream_triplets(str(data), batch_size=2, seed=1, buffer_size=10, skip_invalid=True)
    assert [row["query"] for row in triplets.rows] == [f"q{i}" for i in range(4)]


def test_empty_data_flags_are_refused_before_anything_is_read(tmp_path):
    for flags in (["--train_data", ""], ["--train_data", str(tmp_path), "--eval_data", " "]):
        with pytest.raises(ValueError, match="empty \\(an unset shell variable\\?\\)"):
            training.parse_arguments(flags)


def test_a_run_records_the_fingerprint_of_the_rows_it_read_not_of_the_files_later(tmp_path, monkeypatch):
    path = tmp_path / "train.jsonl"
    path.write_text(jsonl(TRIPLETS))
    model_args, data_args, training_args = training.parse_arguments(
        ["--train_data", str(path), "--output_dir", str(tmp_path / "out")]
    )
    read = fingerprint_files(str(path))
    triplets = training_data.training_triplets(data_args, training_args)
    path.write_text(jsonl(TRIPLETS[:4]))  # edited once the rows are loaded: the run trains (and records) the old ones
    assert triplets.fingerprint == read != fingerprint_files(str(path))
    recipe = resume_recipe(5, model_args, data_args, training_args, triplets.fingerprint)
    assert recipe["data_fingerprint"] == read

    load = training_data.load_triplets

    def edited_while_loading(*args, **kwargs):
        loaded = load(*args, **kwargs)
        path.write_text(jsonl(TRIPLETS))
        return loaded

    monkeypatch.setattr(training_data, "load_triplets", edited_while_loading)
    with pytest.raises(TripletDataError, match="changed while this run read it \\(as it was loaded\\)"):
        training_data.training_triplets(data_args, training_args)


def test_mine_skips_invalid_rows_when_asked_as_its_error_advises(tmp_path):
    from conftest import tiny_model

    data = tmp_path / "data.jsonl"
    data.write_text(jsonl(TRIPLETS[:5]) + jsonl([{"query": "q", "positive": ""}]) + jsonl(TRIPLETS[5:]))
    tiny_model("llama", 5).save_pretrained(tmp_path / "model")
    arguments = ["--train_data", str(data), "--model", str(tmp_path / "model"), "--relative_margin", "-1"]
    with pytest.raises(SystemExit, match="pass --skip_invalid_rows to skip such rows"):
        cli.mine([*arguments, "--output", str(tmp_path / "refused")])
    assert cli.mine([*arguments, "--output", str(tmp_path / "mined"), "--skip_invalid_rows"]) == 0
    mined = load_triplets(str(tmp_path / "mined"))
    assert [row["query"] for row in mined.rows] == [row["query"] for row in TRIPLETS]
    provenance = json.loads((tmp_path / "mined" / "_provenance.json").read_text())
    assert provenance["settings"]["skip_invalid_rows"] is True and provenance["skipped_rows"] == 1
