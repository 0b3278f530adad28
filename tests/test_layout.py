"""The layout holds: imports flow one way (shards -> loaders -> elasticast -> jobs), and the model
package never imports Ray, neither in its source nor when every module of it is loaded."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAYERS, REPO


def imported_packages(path: Path) -> set[str]:
    """Top-level package names of every import in a file, function-level imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = {
        str(path.relative_to(REPO)): sorted((imported_packages(path) & set(LAYERS)) - allowed)
        for path in modules(package)
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_walker_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from jobs.train import main\n    import ray.train\n")
    assert imported_packages(source) == {"os", "jobs", "ray"}


def test_model_package_never_imports_ray():
    in_source = {str(path.relative_to(REPO)) for path in modules("elasticast") if "ray" in imported_packages(path)}
    assert in_source == set()
    names = [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in modules("elasticast")
    ]
    check = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_ray_private_api_is_touched_in_one_function_only():
    users = {
        str(path.relative_to(REPO))
        for package in LAYERS
        for path in modules(package)
        if re.search(r"ray\._private|_base_exc", path.read_text())
    }
    assert users == {"jobs/ray_session.py"}


def test_the_private_flag_we_set_still_mutes_the_errors_ray_relays_to_a_driver(capsys):
    """`jobs.ray_session.mute_relayed_errors` sets a private flag of Ray's: this fails when Ray
    renames it or its printer of relayed lines stops reading it."""
    import ray._private.worker as ray_worker

    from jobs.ray_session import mute_relayed_errors

    def relay(line: str) -> str:  # as Ray's driver prints an error the raylet publishes
        ray_worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        return capsys.readouterr().out

    saved = ray_worker._worker_logs_enabled
    try:
        assert "A worker died" in relay("A worker died or was killed")
        mute_relayed_errors()
        assert relay("A worker died again") == ""
    finally:
        ray_worker._worker_logs_enabled = saved
