"""What `pip install` gives a user: console scripts that resolve and run, and one-line errors for a missing input."""
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_every_console_script_points_at_a_function():
    scripts = _scripts()
    assert set(scripts) == {"koclip-run", "koclip-serve", "koclip-evaluate", "koclip-corpus", "koclip-bench"}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_installed_scripts_answer_help_and_a_missing_input_in_one_line(tmp_path):
    bin_dir = Path(sys.executable).parent
    for name in _scripts():
        script = bin_dir / name
        assert script.exists(), f"{script}: not installed (pip install -e . writes it)"
    for name in ("koclip-corpus", "koclip-evaluate"):
        help_run = subprocess.run([bin_dir / name, "--help"], capture_output=True, text=True, timeout=120)
        assert help_run.returncode == 0 and help_run.stdout.startswith("usage:"), help_run.stderr
    run = subprocess.run([bin_dir / "koclip-corpus", "build", "--input", str(tmp_path / "missing.csv"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "missing.csv" in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()
