"""Packaging: environment.yml lists the same dependencies as pyproject.toml; the CI contract holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
#: pip name -> conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch"}


def _name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _extras(spec: str) -> set[str]:
    m = re.search(r"\[([^\]]+)\]", spec)
    return {e.strip() for e in m.group(1).split(",")} if m else set()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def conda_deps() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "environment.yml must use conda-forge only"
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            out[_name(dep)] = dep
    return out


def test_environment_lists_every_runtime_dependency(pyproject: dict, conda_deps: dict[str, str]) -> None:
    for spec in pyproject["project"]["dependencies"]:
        name = CONDA_NAMES.get(_name(spec), _name(spec))
        assert name in conda_deps, f"{spec!r} from pyproject is missing in environment.yml"
        for extra in _extras(spec):  # monai[einops,nibabel,...] -> each extra listed separately
            assert extra in conda_deps, f"MONAI extra {extra!r} is missing in environment.yml"


def test_environment_lists_test_and_notebook_extras(pyproject: dict, conda_deps: dict[str, str]) -> None:
    extras = pyproject["project"]["optional-dependencies"]
    for spec in extras["test"] + extras["notebooks"]:
        assert _name(spec) in conda_deps, f"{spec!r} (extra) is missing in environment.yml"


def test_environment_has_nothing_pyproject_lacks(pyproject: dict, conda_deps: dict[str, str]) -> None:
    known = {CONDA_NAMES.get(_name(s), _name(s)) for s in pyproject["project"]["dependencies"]}
    for spec in pyproject["project"]["dependencies"]:
        known |= _extras(spec)
    for extra in pyproject["project"]["optional-dependencies"].values():
        known |= {_name(s) for s in extra}
    extra_in_env = set(conda_deps) - known - {"python", "pip"}
    assert not extra_in_env, f"environment.yml lists {sorted(extra_in_env)} which pyproject does not"


def test_version_ranges_agree(pyproject: dict, conda_deps: dict[str, str]) -> None:
    """Where pyproject pins a range, environment.yml uses the same bounds."""
    for spec in pyproject["project"]["dependencies"]:
        bounds = re.findall(r"[<>=!~]=?\s*[\d.]+", spec)
        name = CONDA_NAMES.get(_name(spec), _name(spec))
        for bound in bounds:
            assert bound.replace(" ", "") in conda_deps[name].replace(" ", ""), (
                f"{name}: pyproject bound {bound!r} not in environment.yml line {conda_deps[name]!r}")


def test_pins_required_by_design(pyproject: dict) -> None:
    deps = {_name(s): s for s in pyproject["project"]["dependencies"]}
    assert ">=2.8" in deps["torch"] and "==" not in deps["torch"], "keep torch loose (>=2.8) for Colab"
    assert {"einops", "nibabel", "scipy", "tqdm"} <= _extras(deps["monai"])
    assert ">=1.6" in deps["monai"] and "<1.7" in deps["monai"]
    assert "<" in deps["transformers"], "transformers needs an explicit upper bound"
    assert pyproject["project"]["scripts"]["tdseg"] == "tdseg_lite.cli:main"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    m = re.search(r"<!-- test-command -->\s*```bash\s*\n(.+?)\n```", readme, re.DOTALL)
    assert m, "README must show the test command in a ```bash block after <!-- test-command -->"
    command = m.group(1).strip()
    ci_lines = [l.strip() for l in ci.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert command in ci_lines, f".ci/run must call exactly {command!r}; it runs {ci_lines}"
