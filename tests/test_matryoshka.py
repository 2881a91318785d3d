"""Matryoshka sizes: `train.py --matryoshka_dims` records the trained sizes in the config; `encode(truncate_dim=N)`,
sentence-transformers' `truncate_dim` and `evaluate.py run --truncate-dim N` give the same (renormalised) prefix
embeddings and scores; a size the model was not trained for is refused before any work."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, tiny_model

from poolattn import cli, training
from poolattn.evaluation.results import read_runs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_RUN = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--save_steps",
    "2",
    "--learning_rate",
    "1e-2",
    "--use_cpu",
    "true",
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
]


@pytest.fixture(scope="module")
def trained(tiny_backbone_folder, tmp_path_factory):
    """Variant 5 trained 2 steps with --matryoshka_dims 8,16 on the 32-wide tiny backbone; its exported folder."""
    import json

    from conftest import TRIPLETS

    root = tmp_path_factory.mktemp("matryoshka")
    (root / "triplets.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRIPLETS))
    (folder,) = training.main(
        [
            "--backbone",
            tiny_backbone_folder,
            "--train_data",
            str(root / "triplets.jsonl"),
            "--matryoshka_dims",
            "8,16",
            "--output_dir",
            str(root / "run"),
            *TINY_RUN,
        ]
    )
    return folder


def test_encode_cuts_to_a_trained_size_and_renormalises(trained):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(trained, trust_remote_code=True)
    assert model.config.matryoshka_dims == [8, 16]
    full = model.encode(SENTENCES, normalize=False, convert_to_numpy=False)
    for size in (8, 16):
        expected = torch.nn.functional.normalize(full[:, :size], dim=-1).numpy()
        np.testing.assert_allclose(model.encode(SENTENCES, truncate_dim=size), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.encode(SENTENCES, truncate_dim=32), model.encode(SENTENCES), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"truncate_dim=12: this model was trained for 8, 16 and 32"):
        model.encode(SENTENCES, truncate_dim=12)
    with pytest.raises(ValueError, match=r"trained at its full size 32 only .* train with --matryoshka_dims"):
        tiny_model("llama", 5).encode(SENTENCES, truncate_dim=8)


def test_sentence_transformers_truncate_dim_gives_encodes_prefix(trained, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from poolattn.hub.repository import write_repository_folder

    repository = write_repository_folder(trained, tmp_path / "repo", repo_id="me/tiny-mrl")
    model = AutoModel.from_pretrained(trained, trust_remote_code=True)
    st = SentenceTransformer(str(repository), trust_remote_code=True, device="cpu", truncate_dim=8)
    got = st.encode(SENTENCES, normalize_embeddings=True)
    assert got.shape == (len(SENTENCES), 8)
    np.testing.assert_allclose(got, model.encode(SENTENCES, truncate_dim=8), rtol=0, atol=1e-5)
    card = (repository / "README.md").read_text()
    assert "truncate_dim" in card and "8, 16" in card


def test_evaluate_scores_a_trained_size_under_its_own_revision_and_refuses_others(trained, tmp_path, capsys):
    """`run --truncate-dim 8` equals mteb's stock wrapper over SentenceTransformer(truncate_dim=8) (1e-4), stored
    under `<fingerprint>-dim8` beside the full size's scores; an untrained size is refused before scoring."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from poolattn.evaluation.local_tasks import load_task
    from poolattn.hub.repository import write_repository_folder

    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    (tmp_path / "data" / "BIOSSES").mkdir(parents=True)
    lines = (SHARED / "BIOSSES" / "test.jsonl").read_text().splitlines()[:40]
    (tmp_path / "data" / "BIOSSES" / "test.jsonl").write_text("\n".join(lines) + "\n")
    common = [
        "run",
        "--model",
        str(trained),
        "--tasks",
        "BIOSSES",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "results"),
    ]
    assert cli.evaluate(common) == 0 and cli.evaluate([*common, "--truncate-dim", "8"]) == 0
    (name_folder,) = (tmp_path / "results" / "results").iterdir()
    fingerprint, with_dim = sorted(path.name for path in name_folder.iterdir())
    assert with_dim == f"{fingerprint}-dim8"
    ours = read_runs(name_folder / with_dim)[0].scores["BIOSSES"]
    assert ours != read_runs(name_folder / fingerprint)[0].scores["BIOSSES"]

    repository = write_repository_folder(trained, tmp_path / "repo", repo_id="me/tiny-mrl")
    wrapper = mteb.SentenceTransformerEncoderWrapper(
        SentenceTransformer(str(repository), trust_remote_code=True, device="cpu", truncate_dim=8)
    )
    (stock,) = mteb.evaluate(
        wrapper, [load_task("BIOSSES", data_dir=tmp_path / "data")], cache=None, show_progress_bar=False
    ).task_results
    assert stock.get_score() == pytest.approx(ours, abs=1e-4)

    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"--truncate-dim 12: .* was trained for the smaller sizes 8, 16"):
        cli.evaluate([*common, "--truncate-dim", "12"])
    assert sorted(path.name for path in name_folder.iterdir()) == [fingerprint, with_dim]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("16,8", r"must be distinct integers in ascending order, each from 1 to 31"),
        ("8,32", r"each from 1 to 31 \(the full size 32 is always trained\)"),
        ("eight", r"--matryoshka_dims 'eight': give comma-separated sizes"),
    ],
)
def test_bad_matryoshka_dims_are_refused_before_training(tiny_backbone_folder, triplets_file, tmp_path, flag, message):
    with pytest.raises(ValueError, match=message):
        training.main(
            [
                "--backbone",
                tiny_backbone_folder,
                "--train_data",
                triplets_file,
                "--matryoshka_dims",
                flag,
                "--output_dir",
                str(tmp_path / "run"),
                *TINY_RUN,
            ]
        )
    assert not (tmp_path / "run" / "model").exists()
