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


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_is_in_step_with_pyproject():
    import yaml
    from packaging.specifiers import SpecifierSet

    project = _pyproject()
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    assert "conda-forge" in env["channels"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.split("=", 1)[1] in SpecifierSet(project["requires-python"]), python
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    install = next(line for line in pip if line.startswith("-e ."))
    extras = set(install.split("[", 1)[1].rstrip("]").split(","))
    assert extras <= set(project["optional-dependencies"]), extras - set(project["optional-dependencies"])
    core = {_name(r): r for r in project["dependencies"]}
    for line in pip:
        if not line.startswith("-"):  # a package named in both files has the same range in both
            assert core.get(_name(line)) == line, (line, core.get(_name(line)))


# which extra a module's top-level imports may come from; every other module runs on the core dependencies
MODULE_EXTRAS = {"serve": "serve", "serve_compat": "serve", "loadtest": "serve", "serve_ray": "ray", "explore": "notebooks",
                 "run": "notebooks"}


def test_each_module_imports_only_the_core_and_its_own_extra():
    """A pipeline user's `pip install koclip` must import the core modules: their module-level imports of other
    distributions are all core dependencies; the service's are in [serve], Ray's in [ray], the explorer's in
    [notebooks]. (Imports inside functions are loaded where they are used.)"""
    import ast
    from importlib.metadata import packages_distributions

    project = _pyproject()
    core = {_name(r) for r in project["dependencies"]}
    extras = {name: {_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    extras["ray"] |= extras["serve"]
    owners = packages_distributions()
    stdlib = sys.stdlib_module_names
    problems = []
    for path in sorted((REPO / "koclip_lib").rglob("*.py")):
        allowed = core | extras.get(MODULE_EXTRAS.get(path.stem, ""), set())
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "koclip_lib" or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & allowed:
                    problems.append(f"{path.relative_to(REPO)} imports {top} ({', '.join(sorted(dists))})")
    assert not problems, problems


def test_every_script_refuses_a_bad_flag_and_a_missing_input_in_one_line(tmp_path):
    bin_dir = Path(sys.executable).parent
    missing = str(tmp_path / "missing")
    runs = {"koclip-run": [["--no-such-flag"], ["--params", missing + ".yaml", "--build"]],
            "koclip-serve": [["--pipeline", str(tmp_path), "--no-such-flag"], ["--pipeline", missing]],
            "koclip-evaluate": [["--pipeline", str(tmp_path), "--prompts", str(tmp_path), "--no-such-flag"],
                                ["--pipeline", missing, "--prompts", missing + ".tsv"]],
            "koclip-corpus": [["build", "--input", missing, "--out", missing, "--no-such-flag"], ["build", "--input", missing + ".xlsx", "--out", str(tmp_path / "o")]],
            "koclip-bench": [["--no-such-flag"], ["--params", missing + ".yaml"]]}
    assert set(runs) == set(_scripts())
    for name, (bad_flag, missing_input) in runs.items():
        for argv, named in ((bad_flag, "--no-such-flag"), (missing_input, missing)):
            run = subprocess.run([bin_dir / name, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert run.returncode == 2, (name, argv, run.stderr[-2000:])
            assert run.stderr.count("\n") == 1 and named in run.stderr, (name, argv, run.stderr[-2000:])
