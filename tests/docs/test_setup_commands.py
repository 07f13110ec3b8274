"""README's two set-up commands are what a newcomer types on a fresh Debian 12 (its python3 refuses pip
outside a virtual environment), and .ci/run runs the second one exactly as written."""

import re
import subprocess

from tests.conftest import PROJECT_ROOT

VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def setup_commands() -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"## Set up\n.*?```sh\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_commands_install_into_a_venv_from_a_fresh_debian():
    demo, tests = setup_commands()
    for command in (demo, tests):
        assert command.startswith("apt-get update && apt-get install -y python3 python3-venv mosquitto")
        assert VENV in command and "sudo" not in command
        assert "pip install -e" not in command.split(VENV)[0]      # nothing installed before the venv
    assert demo.endswith(VENV + "pip install -e . && ledgerlink demo")
    assert "chromium qemu-system-arm" in tests
    assert tests.endswith(VENV + "pip install -e '.[test]' && python3 -m pytest -n 2")


def test_ci_runs_the_readme_test_command_as_written():
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    extract = re.search(r"^command=\$\((.*)\)$", script, re.M).group(1)
    taken = subprocess.run(["bash", "-c", extract], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert taken.stdout.strip() == setup_commands()[1]
    assert 'bash -euo pipefail -c "$command"' in script
    assert "pip install" not in script.replace("README", "")     # nothing installed beside the README's command
