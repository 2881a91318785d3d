"""`pip install .` into a fresh virtual environment: the wheel holds the package, its data files and the commands."""

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "poolattn-train": "--variant",
    "poolattn-evaluate": "compare",
    "poolattn-ablate": "--ablation",
    "poolattn-publish": "--hub_model_id",
    "poolattn-mine": "--num_negatives",
    "poolattn-study": "--designs",
}
INSTALLED_FILES = """
import poolattn, poolattn.training.data, poolattn.hub.model_card
print(poolattn.__file__)
assert poolattn.training.data.SAMPLE_TRIPLETS.is_file() and poolattn.hub.model_card.TEMPLATE.is_file()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv that sees this machine's packages (no downloads) with poolattn installed from a built wheel."""
    environment = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    command = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-cache-dir",
        str(ROOT),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "no such option: --python" in result.stderr:
        pytest.skip("pip < 22.3 cannot install into another environment (--python)")
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


def test_the_installed_package_is_the_wheel_with_its_data_files(installed, tmp_path):
    result = subprocess.run(
        [str(installed / "bin" / "python"), "-c", INSTALLED_FILES], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(str(installed))  # not the source checkout


def test_each_console_command_answers_help(installed, tmp_path):
    """All six at once: each spends seconds in single-threaded imports (torch, transformers), sharing the cores."""
    running = {
        command: subprocess.Popen(
            [str(installed / "bin" / command), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for command in COMMANDS
    }
    for command, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (command, stderr[-3000:])
        assert COMMANDS[command] in stdout and "usage:" in stdout, command


HELP_IMPORTS = r"""
import contextlib, io, json, sys
from poolattn import cli
out = io.StringIO()
for command, argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(out):
        try:
            getattr(cli, command)(argv)
        except SystemExit:
            pass
heavy = ("mteb", "peft", "datasets", "sentence_transformers", "onnx", "onnxruntime", "torch", "transformers")
print(json.dumps({"loaded": [name for name in heavy if name in sys.modules], "help": out.getvalue()}))
"""
HELP_COMMANDS = [
    ("evaluate", ["run", "--help"]),
    ("evaluate", ["compare", "--help"]),
    ("run_study_command", ["--help"]),
    ("ablate", ["--help"]),
    ("publish", ["--help"]),
    ("mine", ["--help"]),
    ("export_onnx", ["--help"]),
]


@pytest.mark.parametrize(
    "commands, allowed",
    [(HELP_COMMANDS, set()), ([("train", ["--help"])], {"peft", "torch", "transformers"})],
    ids=["every-other-command", "train"],
)
def test_help_loads_neither_the_evaluation_nor_the_training_data_stack(commands, allowed):
    """`--help` of the console commands in a fresh process (the commands other than train.py's one after another in
    one process: none may load what the others did not): mteb, datasets, sentence-transformers and ONNX stay
    unloaded, and torch, transformers and peft too (parsers read only light modules: ~0.2 s instead of ~6 s), except
    for train.py, whose flags are transformers' TrainingArguments, which imports them."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, json.dumps(commands)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["loaded"]) <= allowed, report["loaded"]
    assert report["help"].count("usage:") == len(commands)
    if commands[0][0] == "train":
        assert "turn cross-device negatives off" in report["help"]


def test_every_flag_of_train_pys_own_groups_says_what_it_does():
    from poolattn import training

    parser = training.argument_parser()
    groups = [group for group in parser._action_groups if group.title in training.OWN_GROUPS]
    assert len(groups) == 3
    silent = [
        action.option_strings[0]
        for group in groups
        for action in group._group_actions
        if not (action.help or "").strip()
    ]
    assert silent == []


def test_data_defaults_come_from_an_explicit_setting_never_from_where_the_package_sits(tmp_path, monkeypatch):
    """Outside a source checkout (an installed wheel) and without $POOLATTN_DATA, the small preset and the study's
    --data-dir say what to set instead of pointing inside site-packages; $POOLATTN_DATA is honoured."""
    from poolattn import shared_data as data

    monkeypatch.setenv("POOLATTN_DATA", str(tmp_path / "mine"))
    assert data.shared_data() == tmp_path / "mine"
    monkeypatch.delenv("POOLATTN_DATA")
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "poolattn" / "shared_data.py"))
    assert data.shared_data() is None
    with pytest.raises(data.SharedDataError, match="set POOLATTN_DATA to its folder .* or give --train_data"):
        data.require_shared_data(f"{data.UNSET_DATA}/train", "--train_data")
    assert data.require_shared_data("my/data", "--train_data") == "my/data"


def test_the_installed_wheel_trains_a_tiny_model_from_data_given_by_path(
    installed, tiny_backbone_folder, triplets_file, tmp_path
):
    """`poolattn-train` from the wheel, outside the checkout, with the backbone and the data given by path (no
    $POOLATTN_DATA, no ../shared/data beside it): a model folder that the installed package reads back."""
    from test_training import TINY_RUN

    command = [
        str(installed / "bin" / "poolattn-train"),
        *("--variant", "5", "--backbone", tiny_backbone_folder, "--train_data", triplets_file),
        *("--output_dir", str(tmp_path / "run"), *TINY_RUN),
    ]
    environment = {key: value for key, value in os.environ.items() if key != "POOLATTN_DATA"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    check = (
        "import sys, poolattn; from poolattn.model_folder import ExportedModel; "
        "model = ExportedModel.read(sys.argv[1]); "
        "print(poolattn.__file__, model.manifest.variant, model.manifest.global_steps)"
    )
    read = subprocess.run(
        [str(installed / "bin" / "python"), "-c", check, str(tmp_path / "run" / "model")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    location, variant, steps = read.stdout.split()
    assert location.startswith(str(installed)) and (variant, steps) == (
        "5",
        TINY_RUN[TINY_RUN.index("--max_steps") + 1],
    )


def package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (relative imports, function-level ones included)."""

    package = ROOT / "poolattn"
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules = set(names.values())
    graph = {}
    for path, name in names.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names] if node.module is None else [base]
                for target in targets:
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    found.add(target)
        packages = {module for module in modules if (ROOT / module.replace(".", "/")).is_dir()}
        graph[name] = found - {name} - packages  # a package's lazy re-exports are not an import of its modules
    return graph


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    state: dict[str, int] = {}

    def visit(module, trail):
        state[module] = 1
        for target in graph.get(module, ()):
            assert state.get(target) != 1, " -> ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_every_module_but_the_hub_pairs_modeling_file_is_under_400_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for path in (ROOT / "poolattn").rglob("*.py")
        if path.name != "modeling_poolattn.py" and (count := len(path.read_text().splitlines())) >= 400
    }
    assert long == {}


def test_every_function_of_the_package_is_at_most_60_lines():
    """Signature, docstring and body together; a longer function is several steps that want names."""
    long = {}
    for path in (ROOT / "poolattn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
