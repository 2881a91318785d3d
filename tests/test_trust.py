"""Remote code only by consent: a folder's own code (its tokenizer's `auto_map`, a tampered modeling file) never runs
unless the user passes trust_remote_code; poolattn folders load with the package's classes."""

import json
from pathlib import Path

import pytest
from conftest import tiny_model

from poolattn import cli
from poolattn.modeling_poolattn import PoolAttnEmbeddingModel

MARKER = "ran.txt"
EVIL_TOKENIZER = """
from pathlib import Path
from transformers import PreTrainedTokenizerFast

Path({marker!r}).write_text("the folder's tokenizer code ran")


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def folder_with_code(tmp_path: Path) -> Path:
    """A poolattn folder whose tokenizer asks for its own code, and whose modeling file was tampered with: both
    write a marker file when they run."""
    folder = tmp_path / "model"
    tiny_model("llama", 5).save_pretrained(folder)
    (folder / "evil_tokenizer.py").write_text(EVIL_TOKENIZER.format(marker=str(folder / MARKER)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}, tokenizer_class="EvilTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    modeling = folder / "modeling_poolattn.py"
    modeling.write_text(
        f"from pathlib import Path\nPath({str(folder / MARKER)!r}).write_text('modeling ran')\n" + modeling.read_text()
    )
    return folder


def test_a_folders_tokenizer_code_runs_only_when_trusted(tmp_path):
    folder = folder_with_code(tmp_path)
    model = PoolAttnEmbeddingModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="asks to run code from that folder.*trust_remote_code=True"):
        model.encode(["a text"])
    assert not (folder / MARKER).exists()
    trusted = PoolAttnEmbeddingModel.from_pretrained(folder, trust_remote_code=True)
    trusted.get_tokenizer()
    assert (folder / MARKER).read_text() == "the folder's tokenizer code ran"


def test_evaluate_and_mine_run_no_code_from_the_folder_unless_asked(tmp_path, triplets_file):
    pytest.importorskip("mteb")
    folder = folder_with_code(tmp_path)
    data = tmp_path / "data" / "BIOSSES"
    data.mkdir(parents=True)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "BIOSSES" / "test.jsonl"
    if not shared.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    data.joinpath("test.jsonl").write_text("\n".join(shared.read_text().splitlines()[:10]) + "\n")
    run = [
        "run",
        "--model",
        str(folder),
        "--tasks",
        "BIOSSES",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "results"),
    ]
    with pytest.raises(SystemExit, match="--trust-remote-code"):  # refused before any task, naming the flag
        cli.evaluate(run)
    assert not list((tmp_path / "results").rglob("BIOSSES.json"))
    assert not (folder / MARKER).exists()
    with pytest.raises(SystemExit, match="trust_remote_code"):
        cli.mine(["--train_data", triplets_file, "--model", str(folder), "--output", str(tmp_path / "mined")])
    assert not (folder / MARKER).exists()
    assert cli.evaluate([*run, "--trust-remote-code"]) == 0
    assert (folder / MARKER).read_text() == "the folder's tokenizer code ran"  # the tokenizer's, never the modeling
