"""`pip install .` into a fresh virtual environment: the wheel holds the package, its data files and the commands."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"poolattn-train": "--variant", "poolattn-evaluate": "compare", "poolattn-ablate": "--ablation",
            "poolattn-publish": "--hub_model_id", "poolattn-mine": "--num_negatives",
            "poolattn-study": "--designs"}
INSTALLED_FILES = """
import poolattn, poolattn.data, poolattn.model_card
print(poolattn.__file__)
assert poolattn.data.SAMPLE_TRIPLETS.is_file() and poolattn.model_card.TEMPLATE.is_file()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv that sees this machine's packages (no downloads) with poolattn installed from a built wheel."""
    environment = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
               "--no-build-isolation", "--no-cache-dir", str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "no such option: --python" in result.stderr:
        pytest.skip("pip < 22.3 cannot install into another environment (--python)")
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


def test_the_installed_package_is_the_wheel_with_its_data_files(installed, tmp_path):
    result = subprocess.run([str(installed / "bin" / "python"), "-c", INSTALLED_FILES], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(str(installed))  # not the source checkout


def test_each_console_command_answers_help(installed, tmp_path):
    """All six at once: each spends seconds in single-threaded imports (torch, transformers), sharing the cores."""
    running = {command: subprocess.Popen([str(installed / "bin" / command), "--help"], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=tmp_path) for command in COMMANDS}
    for command, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (command, stderr[-3000:])
        assert COMMANDS[command] in stdout and "usage:" in stdout, command
