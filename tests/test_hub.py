"""Hub publishing: the dry-run folder loads with AutoModel and sentence-transformers in a fresh process, the card's
YAML holds the expected metadata, and a push (against a mock Hub on loopback) uploads exactly the dry-run files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SENTENCES, biosses_copy, tiny_model, tiny_tokenizer
from mock_hub import MockHub

pytest.importorskip("sentence_transformers")
from poolattn import cli, training  # noqa: E402
from poolattn.hub.repository import publish, repository_files, repository_id, write_repository_folder  # noqa: E402
from poolattn.model_folder import ExportedModel, model_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "what is "
ST_FILES = {
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "sentence_transformers_poolattn.py",
    "onnx_poolattn.py",
}
MODEL_FILES = {
    "config.json",
    "configuration_poolattn.py",
    "modeling_poolattn.py",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}

FRESH_PROCESS_LOADERS = r"""
import json, sys
import numpy as np
sys.modules["poolattn"] = None  # the folder must work without poolattn installed
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
folders, sentences, prompt = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
for folder in folders:
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    assert type(st[0]).__name__ == "PoolAttnTransformer", type(st[0])
    np.savez(folder + "/../" + folder.rsplit("/", 1)[-1] + ".npz",
             auto=auto.encode(sentences, batch_size=3),
             auto_prompt=auto.encode(sentences, prompt=prompt, batch_size=3),
             st=st.encode(sentences, batch_size=3), st_prompt=st.encode(sentences, prompt=prompt, batch_size=3),
             st_query=st.encode_query(sentences, batch_size=3))
"""


def run_fresh(folders, prompt=PROMPT):
    command = [
        sys.executable,
        "-c",
        FRESH_PROCESS_LOADERS,
        json.dumps([str(f) for f in folders]),
        json.dumps(SENTENCES),
        prompt,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return {Path(f).name: np.load(Path(f).parent / f"{Path(f).name}.npz") for f in folders}


CASES = [
    ("llama", 1, "right"),
    ("llama", 2, "right"),
    ("llama", 3, "left"),
    ("llama", 4, "right"),
    ("llama", 5, "right"),
    ("llama", 5, "left"),
    ("qwen2", 5, "right"),
]


def test_dry_run_folder_gives_the_in_memory_embeddings_through_automodel_and_sentence_transformers(tmp_path):
    folders, expected = [], {}
    for family, variant, side in CASES:
        model = tiny_model(family, variant, seed=variant)
        model.tokenizer = tiny_tokenizer(side)
        name = f"{family}-v{variant}-{side}"
        model.save_pretrained(tmp_path / "exported" / name)
        folder = write_repository_folder(
            tmp_path / "exported" / name, tmp_path / "hub" / name, repo_id=f"me/{name}", verify=False
        )  # run_fresh below loads each
        assert MODEL_FILES | ST_FILES | {"README.md"} <= set(repository_files(folder))
        folders.append(folder)
        expected[name] = (model.encode(SENTENCES, batch_size=8), model.encode(SENTENCES, prompt=PROMPT, batch_size=8))
    loaded = run_fresh(folders)
    for name, (plain, prompted) in expected.items():
        got = loaded[name]
        for key in ("auto", "st", "st_query"):  # no prompt saved without a training manifest: query == plain
            np.testing.assert_allclose(got[key], plain, atol=1e-5, err_msg=f"{name} {key}")
        for key in ("auto_prompt", "st_prompt"):
            np.testing.assert_allclose(got[key], prompted, atol=1e-5, err_msg=f"{name} {key}")
        if name.startswith("llama-v5"):  # the prompt is masked out of pooling, yet conditions the text
            assert np.abs(prompted - plain).max() > 1e-3


def front_matter(card_path: Path) -> dict:
    text = card_path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def trained_v5(tiny_backbone_folder, triplets_file, tmp_path):
    """train.py with a query instruction and --hub_dry_run: (exported model folder, repository folder)."""
    exported = training.main(
        [
            "--variant",
            "5",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "run"),
            "--query_instruction",
            "Find the passage",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--save_steps",
            "2",
            "--use_cpu",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--hub_model_id",
            "me/tiny-poolattn",
            "--hub_dry_run",
            str(tmp_path / "hub"),
        ]
    )[0]
    return exported, tmp_path / "hub" / "tiny-poolattn-v5"


def test_train_dry_run_writes_the_repository_folder_with_a_card_from_the_manifest(trained_v5):
    exported, folder = trained_v5
    files = set(repository_files(folder))
    assert files == set(repository_files(exported)) | ST_FILES | {"README.md"}
    assert "training_manifest.json" in files
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    prompts = st_config["prompts"]
    assert (prompts["query"], prompts["document"]) == ("Instruct: Find the passage\nQuery: ", "")  # the trained one
    assert prompts["STS"] == "Instruct: Retrieve semantically similar text.\nQuery: " and prompts["STS-document"] == ""

    metadata = front_matter(folder / "README.md")
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "feature-extraction"
    assert {
        "mteb",
        "sentence-transformers",
        "poolattn-variant-5",
        "bidirectional-attention",
        "multi-layer-trainable-pooling",
    } <= set(metadata["tags"])
    assert metadata["license"] == "other"  # a local backbone without a card: unknown, said so in the card
    assert "base_model" not in metadata and "model-index" not in metadata  # local backbone, not evaluated
    card = (folder / "README.md").read_text()
    manifest = json.loads((exported / "training_manifest.json").read_text())
    assert "4 queries x 8 candidates" in card  # the effective contrastive batch, from the manifest
    assert f"seed | {manifest['seed']}" in card and "arXiv 2409.02727" in card and "@article{tang2024pooling" in card
    assert 'SentenceTransformer("me/tiny-poolattn-v5", trust_remote_code=True)' in card
    assert "Instruct: Find the passage" in card  # the usage snippet's query prompt


def test_sentence_transformers_query_prompt_matches_encode_with_the_trained_instruction(trained_v5):
    from poolattn import PoolAttnEmbeddingModel

    exported, folder = trained_v5
    model = PoolAttnEmbeddingModel.from_pretrained(exported).eval()
    prompt = "Instruct: Find the passage\nQuery: "
    loaded = run_fresh([folder], prompt=prompt)[folder.name]
    np.testing.assert_allclose(loaded["st_query"], model.encode(SENTENCES, prompt=prompt), atol=1e-5)
    np.testing.assert_allclose(loaded["st"], model.encode(SENTENCES), atol=1e-5)


@pytest.fixture
def evaluated(tmp_path):
    """Tiny v1, v3 and v5 folders scored by `evaluate.py run` on two small local STS copies."""
    pytest.importorskip("mteb")
    from poolattn import cli

    shared = ROOT.parent / "shared" / "data"
    for task, rows in (("STSBenchmark", 40), ("BIOSSES", 30)):
        (tmp_path / "data" / task).mkdir(parents=True)
        lines = (shared / task / "test.jsonl").read_text().splitlines()[:rows]
        (tmp_path / "data" / task / "test.jsonl").write_text("\n".join(lines) + "\n")
    models = {variant: tmp_path / "exported" / f"tiny-v{variant}" for variant in (1, 3, 5)}
    arguments = [
        "run",
        "--tasks",
        "STSBenchmark,BIOSSES",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "results"),
    ]
    for variant, folder in models.items():
        tiny_model("llama", variant, seed=variant).save_pretrained(folder)
        arguments += ["--model", str(folder)]
    assert cli.evaluate(arguments) == 0
    return models, tmp_path / "results"


def test_mtebs_stock_sentence_transformers_route_reproduces_the_evaluation_without_hand_passed_prompts(
    evaluated, tmp_path
):
    """The folder's prompts are keyed as mteb looks them up, so mteb's own wrapper scores what evaluate.py scored."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from poolattn.evaluation.local_tasks import load_task
    from poolattn.evaluation.results import read_runs

    models, results = evaluated
    folder = write_repository_folder(models[5], tmp_path / "repo", repo_id="me/tiny-v5", results=results)
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["STS"] == "Instruct: Retrieve semantically similar text.\nQuery: " and prompts["document"] == ""
    wrapper = mteb.SentenceTransformerEncoderWrapper(
        SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    )
    tasks = [load_task(name, data_dir=tmp_path / "data") for name in ("STSBenchmark", "BIOSSES")]
    stock = {
        result.task_name: result.get_score()
        for result in mteb.evaluate(wrapper, tasks, cache=None, show_progress_bar=False).task_results
    }
    name = ExportedModel.read(models[5]).mteb_name
    ours = read_runs(results / "results" / name.replace("/", "__"))[0].scores
    assert stock.keys() == ours.keys()
    for task in ours:
        assert abs(stock[task] - ours[task]) < 1e-4, (task, stock[task], ours[task])


def test_card_holds_the_mteb_results_and_wilcoxon_comparisons_against_the_other_variants(evaluated, tmp_path):
    from huggingface_hub import ModelCard
    from mteb import TaskResult

    models, results = evaluated
    folders = publish(
        list(models.values()), hub_model_id="me/tiny", output_dir=tmp_path / "hub", push=False, results=results
    )
    assert [f.name for f in folders] == ["tiny-v1", "tiny-v3", "tiny-v5"]
    card_path = tmp_path / "hub" / "tiny-v5" / "README.md"
    metadata = front_matter(card_path)
    expected = {}
    for path in (results / "results" / "poolattn__tiny-v5").glob("*/*.json"):  # not predictions/
        if path.name not in ("model_meta.json", "poolattn_run.json"):
            result = TaskResult.from_disk(path)
            expected[f"MTEB {result.task_name} (default)"] = result.get_score()
    (index,) = metadata["model-index"]
    assert index["name"] == "me/tiny-v5"
    got = {entry["dataset"]["name"]: entry["metrics"][0] for entry in index["results"]}
    assert got.keys() == expected.keys()
    for name, metric in got.items():
        assert metric["type"] == "cosine_spearman" and metric["value"] == pytest.approx(expected[name], abs=1e-9)
    assert {entry["task"]["type"] for entry in index["results"]} == {"sentence-similarity"}
    assert len(ModelCard.load(card_path).data.eval_results) == 2  # huggingface_hub parses it back

    body = card_path.read_text()
    assert "| poolattn/tiny-v5 (this model) |" in body
    for peer in ("poolattn/tiny-v1", "poolattn/tiny-v3"):  # one Wilcoxon row per other variant and category
        row = next(line for line in body.splitlines() if line.startswith(f"| {peer} | STS | 2 |"))
        assert row.endswith("| too few datasets (< 5) for the test to mean much |")  # tested, flagged, not claimed


def test_a_cards_other_variants_are_their_plain_runs_never_a_budget_or_other_setting(evaluated):
    """The other variants found by name (not given) are each one's plain run: a newer budget run of variant 1 (here a
    copy with other scores) was taken instead, and its numbers set against this model's full ones."""
    import os
    import shutil

    from poolattn.evaluation.results import find_model_results
    from poolattn.model_folder import ExportedModel

    models, results = evaluated
    plain = next((results / "results" / "poolattn__tiny-v1").iterdir())
    budget = shutil.copytree(plain, plain.parent / f"{plain.name}-budget20")
    os.utime(budget, (plain.stat().st_mtime + 60,) * 2)  # newer than the plain run
    _, peers = find_model_results(results, ExportedModel.read(models[5]))
    assert {peer.name: peer.revision for peer in peers}["poolattn/tiny-v1"] == plain.name


FROM_THE_HUB = r"""
import json, sys
import numpy as np
sys.modules["poolattn"] = None
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
repo_id, sentences, output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
np.savez(output, auto=AutoModel.from_pretrained(repo_id, trust_remote_code=True).encode(sentences),
         st=SentenceTransformer(repo_id, trust_remote_code=True, device="cpu").encode(sentences))
"""


def test_push_uploads_exactly_the_dry_run_files_and_users_load_them_from_the_hub(tmp_path, evaluated):
    from poolattn.evaluation.results import read_results

    models, local_results = evaluated
    model = tiny_model("llama", 5, seed=5)  # the in-memory model behind models[5]
    command = [
        sys.executable,
        str(ROOT / "publish.py"),
        str(models[5]),
        "--hub_model_id",
        "me/tiny",
        "--output_dir",
        str(tmp_path / "hub"),
        "--push",
    ]
    with MockHub() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": "hf_test_token",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
        }
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert hub.created == ["me/tiny-v5"]
        assert hub.files["me/tiny-v5"] == repository_files(tmp_path / "hub" / "tiny-v5")  # same paths, same bytes

        # A user elsewhere: AutoModel and SentenceTransformer from the repository id, without poolattn.
        loaded = subprocess.run(
            [sys.executable, "-c", FROM_THE_HUB, "me/tiny-v5", json.dumps(SENTENCES), str(tmp_path / "from_hub.npz")],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        # ... and evaluate.py on the repository id, which scores the same weights as the local folder.
        evaluation = subprocess.run(
            [
                sys.executable,
                str(ROOT / "evaluate.py"),
                "run",
                "--model",
                "me/tiny-v5",
                "--tasks",
                "BIOSSES",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "hub_results"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    from_hub = np.load(tmp_path / "from_hub.npz")
    expected = model.encode(SENTENCES)
    np.testing.assert_allclose(from_hub["auto"], expected, atol=1e-5)
    np.testing.assert_allclose(from_hub["st"], expected, atol=1e-5)
    local = local_results / "results" / "poolattn__tiny-v5"
    remote = tmp_path / "hub_results" / "results" / "me__tiny-v5"  # no manifest: named by its repository id
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())  # same fingerprint
    scores = [read_results(folder).scores["BIOSSES"] for folder in (local, remote)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


PUSH_TWICE = """
import sys
from pathlib import Path
from poolattn.hub.repository import push_folder
first, second = Path(sys.argv[1]), Path(sys.argv[2])
push_folder(first, "me/tiny-v5")
push_folder(second, "me/tiny-v5")
"""


def test_a_second_push_leaves_no_file_of_the_first_that_the_folder_no_longer_holds(tmp_path):
    """A model published with `--onnx`, retrained and pushed again without it kept the first upload's ONNX export on
    the Hub: `backend="onnx"` loaded the old weights, silently. The repository is now what the folder holds."""
    tiny_model("llama", 5).save_pretrained(tmp_path / "first")
    (tmp_path / "first" / "onnx").mkdir()
    (tmp_path / "first" / "onnx" / "model.onnx").write_bytes(b"old graph")
    (tmp_path / "first" / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    tiny_model("llama", 5, seed=1).save_pretrained(tmp_path / "second")
    with MockHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0"}
        env["HF_HOME"] = str(tmp_path / "home")
        hub.files["me/tiny-v5"] = {".gitattributes": b"*.safetensors filter=lfs\n"}  # the Hub's own
        command = [sys.executable, "-c", PUSH_TWICE, str(tmp_path / "first"), str(tmp_path / "second")]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        stored = hub.files["me/tiny-v5"]
    assert {name: stored[name] for name in stored if name != ".gitattributes"} == repository_files(tmp_path / "second")
    assert ".gitattributes" in stored


@pytest.mark.parametrize("failure", ["unauthorised", "offline", "no token"])
def test_a_failed_push_says_why_and_keeps_the_folder(tmp_path, failure):
    tiny_model("llama", 1).save_pretrained(tmp_path / "exported")
    command = [
        sys.executable,
        str(ROOT / "publish.py"),
        str(tmp_path / "exported"),
        "--hub_model_id",
        "me/tiny",
        "--output_dir",
        str(tmp_path / "hub"),
        "--push",
    ]
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no saved login
    with MockHub(refuse_with=401) as hub:
        env.update(
            {
                "unauthorised": {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_bad"},
                "offline": {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test"},
                "no token": {"HF_ENDPOINT": hub.endpoint},
            }[failure]
        )
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    message = {
        "unauthorised": "refused me/tiny-v1 (HTTP 401)",
        "offline": "HF_HUB_OFFLINE is set",
        "no token": "No Hugging Face token found",
    }[failure]
    assert message in result.stderr and hub.files == {}
    if failure == "unauthorised":  # found only by trying: the folder written is kept for the retry
        assert f"kept at {tmp_path / 'hub' / 'tiny-v1'}" in result.stderr
        assert MODEL_FILES | ST_FILES | {"README.md"} <= set(repository_files(tmp_path / "hub" / "tiny-v1"))
    else:  # known before any work: refused before the folders are written and checked in a fresh process
        assert "Nothing was written; publish.py without --push" in result.stderr
        assert not (tmp_path / "hub").exists()


def test_train_refuses_a_push_it_cannot_make_before_training(
    tiny_backbone_folder, triplets_file, tmp_path, monkeypatch
):
    """Parsing only reads the flags; Hub access is checked when the run starts, before any training or writing."""
    import huggingface_hub

    with pytest.raises(ValueError, match="need --hub_model_id"):
        training.parse_arguments(["--backbone", tiny_backbone_folder, "--push_to_hub", "true"])
    # a name without its organisation (the Trainer takes it) was refused by publish, after every variant had trained
    for flag in ("--push_to_hub", "--hub_dry_run"):
        with pytest.raises(ValueError, match="--hub_model_id: hub_model_id='my-embedder' is not a Hub repository id"):
            training.parse_arguments(
                ["--backbone", tiny_backbone_folder, flag, "true", "--hub_model_id", "my-embedder"]
            )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    flags = ["--backbone", tiny_backbone_folder, "--push_to_hub", "true", "--hub_model_id", "me/x"]
    *_, training_args = training.parse_arguments(flags)  # no network, no credentials while parsing
    assert training_args.push_to_hub is True  # the request is kept as given ...
    from poolattn.training.trainer_arguments import trainer_arguments

    assert trainer_arguments(training_args).push_to_hub is False  # ... the Trainer never pushes checkpoints
    assert training_args.push_to_hub is True
    dispatch = training_args.accelerator_config.dispatch_batches
    assert trainer_arguments(training_args, streaming=True).accelerator_config.dispatch_batches is False
    assert training_args.accelerator_config.dispatch_batches == dispatch  # the copy's, not the parsed arguments'
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1 cannot upload"):
        training.main([*flags, "--train_data", triplets_file, "--output_dir", str(output), "--use_cpu", "true"])
    assert not output.exists()
    with pytest.raises(SystemExit, match="^train: --push_to_hub: .*HF_HUB_OFFLINE=1 cannot upload"):  # one line
        cli.train([*flags, "--train_data", triplets_file, "--output_dir", str(output), "--use_cpu", "true"])
    # an id the Hub refuses only once a variant's suffix is on it: refused before training, not at the publish after
    name = "me/" + "a" * 93  # 96 characters with -v5
    dry = ["--backbone", tiny_backbone_folder, "--hub_dry_run", "true", "--train_data", triplets_file]
    dry += ["--use_cpu", "true"]
    for variant, refused in (("1", None), ("mean-causal", "gives the repository id")):
        arguments = [*dry, "--variant", variant, "--hub_model_id", name, "--output_dir", str(output)]
        if refused:
            with pytest.raises(SystemExit, match=f"--hub_model_id '{name}' {refused}"):
                cli.train([*arguments, "--max_steps", "1"])
            assert not output.exists()
    with pytest.raises(SystemExit, match="--hub_model_id 'me/name-' is refused by the Hub"):
        cli.train([*dry, "--variant", "1", "--hub_model_id", "me/name-", "--output_dir", str(output)])


def test_repository_names_are_checked():
    assert repository_id("org/name", variant=3) == "org/name-v3"
    # a backbone named with its own version: no arm is read out of it (it went to org/name-v2-lite-v2)
    assert repository_id("org/name", variant=2, trained_name="poolattn/deepseek-coder-v2-lite-v2") == "org/name-v2"
    assert repository_id("org/name", variant=None) == "org/name"
    for bad in ("name-only", "a/b/c", "", "org/na me"):
        with pytest.raises(ValueError, match="ORG/NAME"):
            repository_id(bad, variant=1)


def test_publish_refuses_a_folder_that_is_not_a_poolattn_model(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a poolattn model folder"):
        ExportedModel.read(tmp_path / "plain")
    tiny_model("llama", 5).save_pretrained(tmp_path / "a")
    tiny_model("llama", 5, seed=1).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="same repository"):
        publish([tmp_path / "a", tmp_path / "b"], hub_model_id="me/x", output_dir=tmp_path / "hub", push=False)
    assert not (tmp_path / "hub").exists()  # refused before anything was written


def test_publish_refuses_to_write_a_repository_folder_over_the_model_it_publishes(tmp_path):
    """`publish.py hub/tiny-v5 --hub_model_id me/tiny` (a repository folder published again, to the default
    `--output_dir hub`) wrote the repository folder in place of the model it read: files outside the allow-list were
    deleted, and a failed load check deleted the folder, the only copy of the model."""
    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "hub" / "tiny-v5")
    model.save_pretrained(tmp_path / "work" / "tiny-v5" / "model")
    (tmp_path / "hub" / "tiny-v5" / "NOTES.txt").write_text("mine")
    cases = [
        ("hub/tiny-v5", "hub"),  # the repository folder is the model folder
        ("hub/tiny-v5", "hub/tiny-v5"),  # it lies in the model folder
        ("work/tiny-v5/model", "work"),  # it holds the model folder
    ]
    for folder, output in cases:
        with pytest.raises(ValueError, match="would replace .*, the model it is written from.*another --output_dir"):
            publish([tmp_path / folder], hub_model_id="me/tiny", output_dir=tmp_path / output, push=False)
    assert (tmp_path / "hub" / "tiny-v5" / "NOTES.txt").read_text() == "mine"
    assert not (tmp_path / "hub" / "tiny-v5" / "tiny-v5").exists()


@pytest.mark.parametrize(
    "flags, refusal",
    [
        (["{m}", "{m}", "--hub_model_id", "me/tiny"], "same repository"),
        (["{m}", "--hub_model_id", "me/tiny/x"], "not a Hub repository id"),
        (["{m}", "--hub_model_id", "me/tiny", "--results", "{tmp}/none"], "holds no mteb results"),
    ],
)
def test_publish_onnx_checks_every_input_before_any_export(tmp_path, monkeypatch, capsys, flags, refusal):
    """`--onnx` exports take minutes per model: publish refuses its inputs before the first one starts."""
    from poolattn.hub import onnx_export

    exported = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda folder, **_: exported.append(folder))
    tiny_model("llama", 2).save_pretrained(tmp_path / "m")
    argv = [flag.format(m=tmp_path / "m", tmp=tmp_path) for flag in flags]
    assert cli.publish([*argv, "--output_dir", str(tmp_path / "hub"), "--onnx"]) == 1
    assert refusal in capsys.readouterr().err
    assert exported == [] and not (tmp_path / "hub").exists()


def test_a_save_pretrained_folder_loads_in_sentence_transformers_as_encode(tmp_path):
    """The quick start saves with `save_pretrained`: that folder had no modules.json, so `SentenceTransformer` built
    mean pooling over the bare backbone (no head, no EOS: 0.7 from `encode`, exit 0). It now gets the
    sentence-transformers files, also when the model was loaded with `AutoModel` from such a folder (the Hub copy of
    the code) and saved again, which keeps the folder's prompts and its tokenizer (not loaded yet at save: it was
    left out, and the saved folder had none)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "saved")
    expected = model.encode(SENTENCES)
    loaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(loaded.encode(SENTENCES, batch_size=3), expected, atol=1e-5)

    prompts = {"prompts": {"query": "Instruct: find it\nQuery: "}, "default_prompt_name": None}
    (tmp_path / "saved" / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    AutoModel.from_pretrained(tmp_path / "saved", trust_remote_code=True).save_pretrained(tmp_path / "again")
    again = SentenceTransformer(str(tmp_path / "again"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(again.encode(SENTENCES, batch_size=3), expected, atol=1e-5)
    assert again.prompts["query"] == prompts["prompts"]["query"]


SAVE_FROM_THE_HUB = r"""
import json, sys
import numpy as np
sys.modules["poolattn"] = None
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
repo_id, folder, sentences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
AutoModel.from_pretrained(repo_id, trust_remote_code=True).save_pretrained(folder)
st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
assert type(st[0]).__name__ == "PoolAttnTransformer", str(st)
np.savez(folder + ".npz", plain=st.encode(sentences), query=st.encode_query(sentences), prompt=st.prompts["query"])
"""


def test_a_model_loaded_from_the_hub_and_saved_again_keeps_its_sentence_transformers_files_and_prompts(tmp_path):
    """`AutoModel.from_pretrained(repo_id, trust_remote_code=True).save_pretrained(folder)`: AutoModel fetches only
    the Hub pair, so the copy had no modules.json and no prompts (SentenceTransformer mean-pooled the backbone, 1.9
    from `encode` on the tiny model, with a warning that named the wrong fix). The repository's files are now
    fetched at save."""
    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "repo")
    prompts = {"prompts": {"query": "what is "}, "default_prompt_name": None}
    (tmp_path / "repo" / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    with MockHub() as hub:
        hub.files["me/tiny"] = {path.name: path.read_bytes() for path in (tmp_path / "repo").iterdir()}
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
        command = [sys.executable, "-c", SAVE_FROM_THE_HUB, "me/tiny", str(tmp_path / "saved"), json.dumps(SENTENCES)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(tmp_path / "saved.npz")
    assert str(saved["prompt"]) == "what is "
    np.testing.assert_allclose(saved["plain"], model.encode(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(saved["query"], model.encode(SENTENCES, prompt="what is "), atol=1e-5)


SAVE_AND_PUSH = r"""
import sys
sys.modules["poolattn"] = None
from transformers import AutoModel
AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).save_pretrained(
    sys.argv[2], push_to_hub=True, repo_id="me/pushed", commit_message="first"
)
"""


def test_save_pretrained_with_push_to_hub_uploads_the_whole_folder(tmp_path):
    """`save_pretrained(folder, push_to_hub=True)`: transformers uploads at the end of its own save, before the
    tokenizer and the sentence-transformers files were written, so the repository had neither (`encode` found no
    tokenizer, SentenceTransformer mean-pooled the backbone). The upload now follows the whole folder."""
    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "local")
    prompts = {"prompts": {"query": "what is "}, "default_prompt_name": None}
    (tmp_path / "local" / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    with MockHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0"}
        env["HF_HOME"] = str(tmp_path / "home")
        command = [sys.executable, "-c", SAVE_AND_PUSH, str(tmp_path / "local"), str(tmp_path / "pushed")]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd="/")
        assert result.returncode == 0, result.stderr[-3000:]
        assert hub.created == ["me/pushed"]
        uploaded = hub.files["me/pushed"]
    written = repository_files(tmp_path / "pushed")
    assert set(uploaded) == set(written) and set(written) >= MODEL_FILES | ST_FILES | {"README.md"}
    assert all(uploaded[name] == written[name] for name in written)  # same bytes as the folder written


def test_sentence_transformers_token_embeddings_are_the_backbones_last_hidden_states(tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from poolattn.modeling_poolattn import pad_features, tokenize_for_embedding

    model = tiny_model("llama", 5)
    model.save_pretrained(tmp_path / "m")
    folder = write_repository_folder(tmp_path / "m", tmp_path / "repo", repo_id="me/tiny-v5")
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    tokens = st.encode(SENTENCES, output_value="token_embeddings", batch_size=4)
    for text, embedded in zip(SENTENCES, tokens):
        features = tokenize_for_embedding(model.tokenizer, [text], max_length=64, add_eos=True)
        batch = pad_features(features, pad_token_id=0, padding_side="right")
        with torch.no_grad():
            expected = model(**batch).last_hidden_state[0]
        torch.testing.assert_close(torch.as_tensor(embedded), expected, rtol=0, atol=1e-5)


def test_train_exports_are_sentence_transformers_folders_that_equal_encode(
    tiny_backbone_folder, triplets_file, tmp_path
):
    """train.py's own export (not only publish.py's folders): SentenceTransformer(export) runs the pooling head and
    its query prompt, equal to `encode` within 1e-5 in a fresh process without poolattn."""
    from poolattn import training
    from poolattn.modeling_poolattn import PoolAttnEmbeddingModel

    exported = training.main(
        [
            "--variant",
            "5",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--query_instruction",
            "Find the answer",
        ]
    )[0]
    assert set(path.name for path in exported.iterdir()) >= ST_FILES
    got = run_fresh([exported])[exported.name]
    model = PoolAttnEmbeddingModel.from_pretrained(exported)
    np.testing.assert_allclose(got["st"], model.encode(SENTENCES, batch_size=3), atol=1e-5)
    np.testing.assert_allclose(
        got["st_query"], model.encode(SENTENCES, prompt="Instruct: Find the answer\nQuery: ", batch_size=3), atol=1e-5
    )


def test_publish_ships_only_model_files_the_packages_code_and_no_local_path(
    tiny_backbone_folder, triplets_file, tmp_path, caplog
):
    """A trained export with a stray file (a token), a tampered modeling file and this machine's paths in its
    manifest: the repository folder holds the allow-listed files, the package's own code, no local path, and loads
    in a fresh process; a folder whose config says another design than its weights, or without a tokenizer, is
    refused and nothing is written."""
    from poolattn import training
    from poolattn.hub.shipping import PACKAGE_CODE, PACKAGE_DIR, ShippingError

    exported = training.main(
        [
            "--variant",
            "5",
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            triplets_file,
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
        ]
    )[0]
    (exported / "hf_token.txt").write_text("hf_secret")
    modeling = exported / "modeling_poolattn.py"
    modeling.write_text("import os  # tampered\n" + modeling.read_text())
    assert str(tmp_path) in (exported / "training_manifest.json").read_text()  # the paths a run records
    [folder] = publish([exported], hub_model_id="me/tiny", output_dir=tmp_path / "hub", push=False)
    files = repository_files(folder)
    assert "hf_token.txt" not in files and "left out of the repository folder" in caplog.text
    for name in PACKAGE_CODE:
        assert files[name] == (PACKAGE_DIR / name).read_bytes()
    for name, content in files.items():
        if name.endswith((".json", ".md")):
            text = content.decode()
            assert str(tmp_path) not in text and "/tmp/" not in text, name
    manifest = json.loads(files["training_manifest.json"])
    assert manifest["backbone"] == Path(tiny_backbone_folder).name
    for name, content in files.items():  # every JSON file still parses; the tokenizer's vocabulary is untouched
        if name.endswith(".json"):
            json.loads(content)
    assert files["tokenizer.json"] == (exported / "tokenizer.json").read_bytes()
    assert model_fingerprint(folder) == model_fingerprint(exported)  # scores of the export are the published copy's

    wrong = tmp_path / "wrong"
    shutil.copytree(exported, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "variant": 1, "pooling": "eos"}))
    with pytest.raises(ShippingError, match="does not load as its card says"):
        publish([wrong], hub_model_id="me/wrong", output_dir=tmp_path / "hub2", push=False)
    assert not (tmp_path / "hub2").exists() or not any((tmp_path / "hub2").iterdir())
    (exported / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    with pytest.raises(ShippingError, match=r"has no tokenizer vocabulary \(tokenizer.json, tokenizer.model"):
        publish([exported], hub_model_id="me/tiny", output_dir=tmp_path / "hub3", push=False)
    (tmp_path / "tokenizer.json").rename(exported / "tokenizer.json")
    (exported / "tokenizer_config.json").unlink()
    with pytest.raises(ShippingError, match="has no tokenizer_config.json"):
        publish([exported], hub_model_id="me/tiny", output_dir=tmp_path / "hub3", push=False)


def test_a_card_names_the_results_it_leaves_out_and_why(tmp_path, caplog):
    """Results of the exact weights scored on a budget are never shown as the model's scores: the card (and the
    command's log) names them and says why, instead of a bare "Not evaluated yet"."""
    pytest.importorskip("mteb")
    from poolattn import cli

    biosses_copy(tmp_path / "data", 20)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    assert (
        cli.evaluate(
            [
                "run",
                "--model",
                str(tmp_path / "m"),
                "--tasks",
                "BIOSSES",
                "--data-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "results"),
                "--budget",
                "10",
            ]
        )
        == 0
    )
    assert (
        cli.publish(
            [
                str(tmp_path / "m"),
                "--hub_model_id",
                "me/tiny",
                "--output_dir",
                str(tmp_path / "hub"),
                "--results",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    card = (tmp_path / "hub" / "tiny-v5" / "README.md").read_text()
    assert "Not evaluated yet" in card and "left out of this card" in card
    assert "-budget10`: a budget of 10 units per task (not comparable with published MTEB numbers)." in card
    assert "left out of the card: scored with a budget of 10 units per task" in caplog.text


def test_publish_with_relative_folders_checks_and_writes_the_folder(tmp_path, monkeypatch):
    """The README's commands give relative paths (`publish.py outputs/.../model --output_dir hub/`); the fresh-process
    load check runs elsewhere, so it must get the folders' absolute paths (a relative one reads as a Hub id)."""
    tiny_model("llama", 5).save_pretrained(tmp_path / "outputs" / "model")
    monkeypatch.chdir(tmp_path)
    argv = ["outputs/model", "--hub_model_id", "me/tiny", "--output_dir", "hub/"]
    assert cli.publish(argv) == 0  # verified: the folder loads in a fresh process as its card says
    assert (tmp_path / "hub" / "tiny-v5" / "README.md").is_file()


def test_a_local_path_outside_ascii_is_scrubbed_as_json_writes_it(tmp_path):
    """A run writes its records with JSON's escapes (`/home/jos\\u00e9/run`); the scrubber looked for the path as it is
    (`/home/josé/run`), found none, and the repository folder shipped the user's name and folders."""
    from poolattn.files import write_json
    from poolattn.hub.shipping import local_paths, scrub_local_paths

    run = tmp_path / "josé" / "run"
    run.mkdir(parents=True)
    write_json(run / "training_manifest.json", {"output_dir": str(run), "data": {"train": str(run / "données.jsonl")}})
    assert "\\u00e9" in (run / "training_manifest.json").read_text()  # how it is written
    scrub_local_paths(run, local_paths(run))
    text = (run / "training_manifest.json").read_text()
    assert "jos" not in text and str(tmp_path) not in text
    assert json.loads(text) == {"output_dir": "run", "data": {"train": "données.jsonl"}}


@pytest.mark.parametrize(
    "hub_model_id, reason",
    [
        ("me/a..b", "Cannot have -- or .."),
        ("me/-bad-", "cannot start or end with '-' or '.'"),
        ("me/" + "n" * 94, "maximum length is 96"),  # -v5 makes the NAME 97 characters
        ("me/modèle", "alphanumeric chars"),
        ("me/name-", "Cannot have -- or .."),  # -v5 makes it name--v5
    ],
)
def test_publish_refuses_a_repository_id_the_hub_refuses_before_writing_anything(
    tmp_path, capsys, hub_model_id, reason
):
    """`--hub_model_id ORG/a..b` wrote `a..b-v5` and exited 0 (a push then failed on the Hub client's own check)."""
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    argv = [str(tmp_path / "m"), "--hub_model_id", hub_model_id, "--output_dir", str(tmp_path / "hub")]
    assert cli.publish(argv) == 1
    error = capsys.readouterr().err
    assert f"--hub_model_id {hub_model_id!r}" in error and "refused by the Hub" in error and reason in error
    assert "give another --hub_model_id" in error and "ASCII letters, digits" in error
    assert not (tmp_path / "hub").exists()  # refused before anything was written


def test_a_push_to_a_repository_id_the_hub_refuses_is_not_called_a_connection_problem(tmp_path, monkeypatch):
    """The Hub client refuses `ORG/a..b-v5` before any request; that was reported as "Could not reach the Hub ...
    rerun the same command to retry the upload", which can never work."""
    import huggingface_hub

    from poolattn.hub.repository import HubPushError, push_folder

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubPushError) as refused:
        push_folder(tmp_path, "me/a..b-v5", token="hf_test_token")
    message = str(refused.value)
    assert "'me/a..b-v5': not a repository id the Hub accepts (Cannot have -- or .." in message
    assert "publish again with another --hub_model_id" in message and f"kept at {tmp_path}" in message
    assert "Could not reach the Hub" not in message and "retry" not in message


def test_publish_finds_the_models_results_by_their_fingerprint_under_another_name(tmp_path, caplog):
    """Results of these exact weights stored under another model name (scored by the Hub id, a renamed folder) were
    not found: exit 0, no warning, a card saying "Not evaluated yet". They are found by the weights' fingerprint; two
    names holding them, or none, is a warning naming the folder searched and what it holds."""
    pytest.importorskip("mteb")
    biosses_copy(tmp_path / "data", 20)
    tiny_model("llama", 5).save_pretrained(tmp_path / "m")
    results = tmp_path / "results"
    argv = ["run", "--model", str(tmp_path / "m"), "--tasks", "BIOSSES", "--data-dir", str(tmp_path / "data")]
    assert cli.evaluate([*argv, "--output", str(results)]) == 0
    own = results / "results" / "poolattn__m"  # the model's own name
    renamed = own.rename(own.with_name("me__tiny-v5"))  # e.g. scored by the published repository's id

    publish_argv = [str(tmp_path / "m"), "--hub_model_id", "me/tiny", "--results", str(results)]
    assert cli.publish([*publish_argv, "--output_dir", str(tmp_path / "hub")]) == 0
    card = tmp_path / "hub" / "tiny-v5" / "README.md"
    (index,) = front_matter(card)["model-index"]
    assert [entry["dataset"]["name"] for entry in index["results"]] == ["MTEB BIOSSES (default)"]
    assert "| BIOSSES | STS | cosine_spearman |" in card.read_text() and "Not evaluated yet" not in card.read_text()
    assert f"found under {renamed / model_fingerprint(tmp_path / 'm')} go on the card" in caplog.text

    caplog.clear()
    shutil.copytree(renamed, renamed.with_name("someone__copy"))  # two names: which one is meant cannot be told
    folder = write_repository_folder(tmp_path / "m", tmp_path / "two", repo_id="me/tiny-v5", results=results)
    assert "Not evaluated yet" in (folder / "README.md").read_text()
    assert f"under {results / 'results'} are under 2 model names" in caplog.text

    caplog.clear()
    for name in ("me__tiny-v5", "someone__copy"):  # results of other weights only
        revision = next((results / "results" / name).iterdir())
        revision.rename(revision.with_name("0123456789abcdef"))
    folder = write_repository_folder(tmp_path / "m", tmp_path / "none", repo_id="me/tiny-v5", results=results)
    assert "Not evaluated yet" in (folder / "README.md").read_text()
    assert f"--results {results} holds no results of this model (poolattn/m," in caplog.text
    assert "it holds results of other weights (me/tiny-v5, someone/copy)" in caplog.text


def test_a_publish_whose_load_check_fails_keeps_the_earlier_repository_folders(tmp_path):
    """A publish whose fresh-process load check failed deleted the folders it had just written over, including a
    good folder an earlier publish had left there. The new folders are now checked beside them first."""
    from poolattn.hub.shipping import ShippingError

    tiny_model("llama", 1).save_pretrained(tmp_path / "v1")
    tiny_model("llama", 3).save_pretrained(tmp_path / "v3")
    publish([tmp_path / "v1", tmp_path / "v3"], hub_model_id="me/tiny", output_dir=tmp_path / "hub", push=False)
    earlier = {name: repository_files(tmp_path / "hub" / name) for name in ("tiny-v1", "tiny-v3")}

    tiny_model("llama", 3, seed=1).save_pretrained(tmp_path / "new-v3")  # a good model, published with a bad one
    tiny_model("llama", 5).save_pretrained(tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "variant": 1, "pooling": "eos"}))
    with pytest.raises(ShippingError, match="does not load as its card says"):
        publish(
            [tmp_path / "new-v3", tmp_path / "bad"], hub_model_id="me/tiny", output_dir=tmp_path / "hub", push=False
        )
    assert {name: repository_files(tmp_path / "hub" / name) for name in earlier} == earlier  # neither replaced
    assert sorted(path.name for path in (tmp_path / "hub").iterdir()) == ["tiny-v1", "tiny-v3"]  # no temp folder left
