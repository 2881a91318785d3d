"""ONNX export: ONNX Runtime gives PyTorch's embeddings for every design (left and right padding, a prompt, batch
sizes other than the traced one), through `PoolAttnOnnxModel` and sentence-transformers' `backend="onnx"`; a bad
export writes nothing."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, tiny_model, tiny_tokenizer

for _module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_module, reason="ONNX export needs the onnx extra: pip install 'poolattn[onnx]'")

from poolattn import PoolAttnOnnxModel, export_onnx  # noqa: E402
from poolattn.cli import export_onnx as export_onnx_command  # noqa: E402
from poolattn.configuration_poolattn import DESIGNS  # noqa: E402
from poolattn.hub import onnx_export as onnx_export_module  # noqa: E402
from poolattn.hub.onnx_export import OnnxExport, OnnxExportMismatch  # noqa: E402
from poolattn.onnx_poolattn import ONNX_FILE, ONNX_INT8_FILE  # noqa: E402

PROMPT = "Instruct: find the same meaning\nQuery: "
# Every graph part once: EOS-last (1), the last-layer head (2) and the multi-layer head (5), mean pooling, and both
# attentions; 3 and 4 only recombine these parts (~10 s of export each).
EXPORTED_DESIGNS = (1, 2, 5, "mean-bidirectional")
TOLERANCE = 1e-5  # unit-norm embeddings, ORT fp32 vs PyTorch fp32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """design -> (in-memory PyTorch model, its folder with an ONNX export); each design exported once."""
    cache = {}

    def export(design):
        if design not in cache:
            model = tiny_model("llama", design, seed=3)
            folder = tmp_path_factory.mktemp(f"onnx-{design}")
            model.save_pretrained(folder)
            export_onnx(folder, quantize=design == 5)
            cache[design] = model, folder
        return cache[design]

    return export


def test_the_exported_designs_cover_every_head_and_attention():
    poolings = {spec["pooling"] for spec in DESIGNS.values()}
    assert {DESIGNS[design]["pooling"] for design in EXPORTED_DESIGNS} == poolings
    assert {DESIGNS[design]["attention"] for design in EXPORTED_DESIGNS} == {"causal", "bidirectional"}


@pytest.mark.parametrize("design", EXPORTED_DESIGNS)
def test_onnx_runtime_gives_the_pytorch_embeddings_for_every_design(exported, design):
    model, folder = exported(design)
    runtime = PoolAttnOnnxModel.from_pretrained(folder)
    texts = [*SENTENCES, "x"]
    for side in ("right", "left"):
        model.tokenizer = runtime.tokenizer = tiny_tokenizer(side)
        for prompt in (None, PROMPT):
            for batch_size in (1, 2, len(texts)):  # the graph was traced at batch 3
                expected = model.encode(texts, prompt=prompt, batch_size=batch_size)
                got = runtime.encode(texts, prompt=prompt, batch_size=batch_size)
                np.testing.assert_allclose(
                    got,
                    expected,
                    rtol=0,
                    atol=TOLERANCE,
                    err_msg=f"{design}, {side} padding, prompt={prompt!r}, batch {batch_size}",
                )
    unnormalised = model.encode(SENTENCES[:2], normalize=False)
    np.testing.assert_allclose(runtime.encode(SENTENCES[:2], normalize=False), unnormalised, rtol=1e-5, atol=1e-5)
    record = OnnxExport.read(folder)
    assert record.max_abs_diff <= 1e-4 and len(record.checks) == 8 and record.file == ONNX_FILE
    assert (folder / "onnx_poolattn.py").is_file()


def test_the_export_is_quiet_and_exports_the_model_in_eval_mode(tmp_path):
    """No "training mode" warning (the graph wrapper is put in eval mode) and none of the exporter's known notes
    (without torchvision installed, torch logged four "Skipping torchvision::..." lines per export)."""
    import warnings

    tiny_model("llama", 1, seed=3).save_pretrained(tmp_path / "model")
    logged = logging.Handler()
    logged.emit = lambda record: logged.records.append(record.getMessage())
    logged.records = []
    torch_log = logging.getLogger(onnx_export_module.TORCH_REGISTRATION_LOGGER)
    torch_log.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_onnx(tmp_path / "model")
    finally:
        torch_log.removeHandler(logged)
    messages = [str(warning.message) for warning in caught]
    assert not [m for m in messages if "training mode" in m or "axis name" in m or "LeafSpec" in m], messages
    assert not [m for m in logged.records if "torchvision" in m], logged.records


def test_int8_export_is_recorded_and_close_but_not_equal(exported):
    model, folder = exported(5)
    record = OnnxExport.read(folder)
    assert record.int8_file == ONNX_INT8_FILE and 0.9 < record.int8_min_cosine <= 1.0
    int8 = PoolAttnOnnxModel.from_pretrained(folder, file_name=ONNX_INT8_FILE)
    cosine = (int8.encode(SENTENCES) * model.encode(SENTENCES)).sum(-1)
    assert cosine.min() > 0.9 and np.abs(int8.encode(SENTENCES) - model.encode(SENTENCES)).max() > TOLERANCE


def test_the_graphs_and_the_record_hold_no_path_of_this_machine(exported):
    """The exporter records each node's Python stack trace, with the absolute paths of the installed packages'
    files; a graph shipped to the Hub carried them (publish.py scrubs only text files). `export.json` named the
    folder by its local path."""
    _, folder = exported(5)
    site_packages = str(Path(torch.__file__).resolve().parents[1]).encode()
    graphs = [path for path in (folder / "onnx").iterdir() if path.suffix == ".onnx"]
    assert len(graphs) == 2  # fp32 and int8
    for graph in graphs:
        content = graph.read_bytes()
        assert site_packages not in content and str(folder).encode() not in content, graph.name
    assert str(folder.parent) not in (folder / "onnx" / "export.json").read_text()


def test_a_mismatched_export_raises_and_writes_nothing(tmp_path, monkeypatch):
    model = tiny_model("llama", 2)
    model.save_pretrained(tmp_path / "m")
    saved = sorted(path.name for path in (tmp_path / "m").iterdir())
    real_forward = onnx_export_module.EmbeddingGraph.forward

    def shifted(self, input_ids, attention_mask, pooling_mask):  # a wrong graph: every embedding moved
        return real_forward(self, input_ids, attention_mask, pooling_mask) + 0.5

    monkeypatch.setattr(onnx_export_module.EmbeddingGraph, "forward", shifted)
    with pytest.raises(OnnxExportMismatch, match="differs from PyTorch by .* > tolerance"):
        export_onnx(tmp_path / "m")
    assert sorted(path.name for path in (tmp_path / "m").iterdir()) == saved


def test_evaluate_scores_only_the_folders_own_onnx_export_of_the_weights_it_holds(tmp_path):
    """`--onnx` names a file inside the model's folder (an absolute or `../` path scored another model's graph under
    this model's name), and an export made before the weights were saved again is refused (it was scored as the
    old graph, exit 0)."""
    from poolattn import cli

    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    export_onnx(tmp_path / "m")
    run = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES", "--output", str(tmp_path / "out")]
    for elsewhere in (str(tmp_path / "m" / "onnx" / "model.onnx"), "../m/onnx/model.onnx"):
        with pytest.raises(SystemExit, match=r"give the ONNX file as a path inside the model's folder"):
            cli.evaluate([*run, "--onnx", elsewhere])
    tiny_model("llama", 5, seed=7).save_pretrained(tmp_path / "m")  # new weights, the old export beside them
    with pytest.raises(SystemExit, match=r"ONNX export was made from other weights .* export it again"):
        cli.evaluate([*run, "--onnx", "onnx/model.onnx"])
    assert not (tmp_path / "out" / "results").exists()
    # loaded by itself (and so by sentence-transformers' backend="onnx"), it gave the old model's embeddings
    with pytest.raises(ValueError, match="ONNX export was made from other weights than its model.safetensors"):
        PoolAttnOnnxModel.from_pretrained(tmp_path / "m")
    # publish.py --onnx exports it again rather than ship (and check) the old graph
    published = [str(tmp_path / "m"), "--hub_model_id", "me/m", "--output_dir", str(tmp_path / "hub"), "--onnx"]
    assert cli.publish(published) == 0
    fresh = tiny_model("llama", 5, seed=7)
    np.testing.assert_allclose(
        PoolAttnOnnxModel.from_pretrained(tmp_path / "m").encode(SENTENCES), fresh.encode(SENTENCES), atol=TOLERANCE
    )


def test_a_file_named_onnx_in_the_folder_is_refused_before_the_export(tmp_path, capsys):
    tiny_model("llama", 1).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "onnx").write_text("not a folder")
    saved = sorted(path.name for path in (tmp_path / "m").iterdir())
    assert export_onnx_command([str(tmp_path / "m")]) == 1
    assert "m/onnx is a file; the export writes the folder onnx/ there" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "m").iterdir()) == saved
    assert (tmp_path / "m" / "onnx").read_text() == "not a folder"


FRESH_SENTENCE_TRANSFORMERS = r"""
import json, sys
import numpy as np
sys.modules["poolattn"] = None  # the published folder must work without poolattn installed
from sentence_transformers import SentenceTransformer
folder, sentences, prompt = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
onnx = SentenceTransformer(folder, backend="onnx", trust_remote_code=True, device="cpu")
int8 = SentenceTransformer(folder, backend="onnx", trust_remote_code=True, device="cpu",
                           model_kwargs={"file_name": "onnx/model_qint8.onnx"})
assert type(onnx[0].auto_model).__name__ == "PoolAttnOnnxModel", type(onnx[0].auto_model)
np.savez(folder + ".npz", onnx=onnx.encode(sentences, batch_size=2),
         onnx_prompt=onnx.encode(sentences, prompt=prompt, batch_size=3), int8=int8.encode(sentences))
"""


def test_sentence_transformers_onnx_backend_runs_the_exported_head_without_poolattn(exported, tmp_path):
    from poolattn.hub.repository import repository_files, write_repository_folder

    model, folder = exported(5)
    repository = write_repository_folder(folder, tmp_path / "repo", repo_id="me/tiny-v5")
    assert {ONNX_FILE, ONNX_FILE + ".data", ONNX_INT8_FILE, "onnx_poolattn.py"} <= set(repository_files(repository))
    assert 'backend="onnx"' in (repository / "README.md").read_text()
    command = [sys.executable, "-c", FRESH_SENTENCE_TRANSFORMERS, str(repository), json.dumps(SENTENCES), PROMPT]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(f"{repository}.npz")
    model.tokenizer = tiny_tokenizer()
    np.testing.assert_allclose(got["onnx"], model.encode(SENTENCES), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got["onnx_prompt"], model.encode(SENTENCES, prompt=PROMPT), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        got["int8"],
        PoolAttnOnnxModel.from_pretrained(folder, file_name=ONNX_INT8_FILE).encode(SENTENCES),
        rtol=0,
        atol=TOLERANCE,
    )


def test_missing_export_and_bad_folders_are_refused_with_the_fix(tmp_path, capsys):
    model = tiny_model("llama", 1)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no ONNX export here.*poolattn-export-onnx"):
        PoolAttnOnnxModel.from_pretrained(tmp_path / "m")
    assert export_onnx_command([str(tmp_path / "nothing-here")]) == 1
    assert "not a model folder" in capsys.readouterr().err
    assert export_onnx_command([str(tmp_path / "m"), "--tolerance", "0"]) == 1
    assert "tolerance=0.0" in capsys.readouterr().err
    assert not (tmp_path / "m" / "onnx").exists()
    # a backbone's folder loaded as a default poolattn config (a random 7B model: killed for memory)
    model.model.save_pretrained(tmp_path / "backbone")
    assert export_onnx_command([str(tmp_path / "backbone")]) == 1
    assert "is not a poolattn model" in capsys.readouterr().err
    (tmp_path / "m" / "model.safetensors").unlink()
    assert export_onnx_command([str(tmp_path / "m")]) == 1
    assert "has no model.safetensors" in capsys.readouterr().err


def test_forward_takes_the_pytorch_inputs(exported):
    model, folder = exported(5)
    runtime = PoolAttnOnnxModel.from_pretrained(folder)
    input_ids = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).embeddings
    torch.testing.assert_close(runtime(input_ids, attention_mask).embeddings, expected, rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="all-zero attention_mask"):
        runtime(input_ids, torch.zeros_like(attention_mask))
    # a row with nothing to pool (an empty text, its prompt masked out): PyTorch refuses it; the traced graph has no
    # check, and gave a vector that did not depend on the text
    pooling_mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0]])
    for route in (model, runtime):
        with pytest.raises(ValueError, match=r"Rows \[0\] have no token to pool"):
            route(input_ids=input_ids, attention_mask=attention_mask, pooling_mask=pooling_mask)
    assert Path(folder, ONNX_FILE).is_file()


def test_evaluate_scores_the_onnx_export_under_its_own_revision(exported, tmp_path, capsys):
    """The mteb route: `evaluate.py run --onnx` gives PyTorch's scores (fp32) under `<fingerprint>-onnx`, and the
    int8 copy's under `-onnx-qint8`; a model without an export is refused before any scoring."""
    pytest.importorskip("mteb")
    from poolattn import cli

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    (tmp_path / "data" / "STSBenchmark").mkdir(parents=True)
    lines = (shared / "STSBenchmark" / "test.jsonl").read_text().splitlines()[:40]
    (tmp_path / "data" / "STSBenchmark" / "test.jsonl").write_text("\n".join(lines) + "\n")
    _, folder = exported(5)
    common = [
        "--model",
        str(folder),
        "--tasks",
        "STSBenchmark",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "results"),
        "--batch-size",
        "8",
    ]
    scores = {}
    for flags in ([], ["--onnx"], ["--onnx", ONNX_INT8_FILE]):
        capsys.readouterr()
        assert cli.evaluate(["run", *common, *flags]) == 0
        scores[" ".join(flags)] = float(capsys.readouterr().out.split("STSBenchmark")[1].split()[0])
    revisions = sorted(path.name for path in (tmp_path / "results" / "results").glob("*/*"))
    fingerprint = revisions[0]
    assert revisions == [fingerprint, f"{fingerprint}-onnx", f"{fingerprint}-onnx-qint8"]
    assert scores["--onnx"] == pytest.approx(scores[""], abs=1e-4)
    tiny_model("llama", 1).save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit, match="no ONNX export here"):
        cli.evaluate(["run", "--model", str(tmp_path / "plain"), *common[2:], "--onnx"])


def test_a_replaced_onnx_graph_is_scored_again(tmp_path, caplog):
    """The ONNX graph scored is part of each task's key: a graph replaced under its name (here by the int8 copy of
    the same weights, as another exporter's or quantizer's output would be; its export record still names these
    weights) was served the old graph's scores, since the revision hashes the weights, not the graph."""
    pytest.importorskip("mteb")
    from poolattn.evaluation.scoring import evaluate_models

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    (tmp_path / "data" / "BIOSSES").mkdir(parents=True)
    (tmp_path / "data" / "BIOSSES" / "test.jsonl").write_text((shared / "BIOSSES" / "test.jsonl").read_text())
    tiny_model("llama", 5, seed=3).save_pretrained(tmp_path / "m")
    export_onnx(tmp_path / "m", quantize=True)

    def score(output: str, onnx_file: str = ONNX_FILE) -> float:
        run = evaluate_models(
            [str(tmp_path / "m")],
            output=tmp_path / output,
            tasks=["BIOSSES"],
            data_dir=tmp_path / "data",
            batch_size=8,
            onnx_file=onnx_file,
        )
        return next(iter(run.scores.values()))["BIOSSES"]

    fp32, int8 = score("results"), score("int8", ONNX_INT8_FILE)
    assert abs(fp32 - int8) > 1e-6
    graph = tmp_path / "m" / ONNX_FILE
    graph.write_bytes((tmp_path / "m" / ONNX_INT8_FILE).read_bytes())  # its external data file keeps its own name
    assert score("results") == pytest.approx(int8, abs=1e-6)
    assert "BIOSSES was scored with another ONNX graph" in caplog.text
