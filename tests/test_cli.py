"""The commands: installable console scripts, flags parsed before torch or Ray load, a help
sentence for every flag, choices enforced, and make_shards choosing its backend out loud."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import venv
import zipfile

import pytest

from elasticast.training.config import TrainConfig

from conftest import REPO

COMMANDS = {
    "make_shards": "elasticast-make-shards",
    "train": "elasticast-train",
    "evaluate": "elasticast-evaluate",
    "import_weights": "elasticast-import-weights",
}
HEAVY = ("torch", "torchaudio", "ray", "numba", "pyarrow", "soundfile")


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_is_printed_before_any_heavy_import(module):
    probe = (
        f"import sys\nfrom jobs import {module}\ntry:\n    {module}.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert "usage:" in out and out.strip().endswith("LOADED []")


def test_every_train_flag_has_a_help_sentence_and_choices_are_enforced(capsys):
    from jobs import train

    with pytest.raises(SystemExit) as stopped:
        train.main(["--packing", "best_fit"])
    assert stopped.value.code == 2 and "invalid choice: 'best_fit'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for field in dataclasses.fields(TrainConfig):
        flag, text = "--" + field.name.replace("_", "-"), "".join(field.metadata["help"].split())
        assert flag in shown and text in shown, field.name


def test_shard_sizes_mean_what_their_units_say(make_shards, capsys):
    parse_size = make_shards.parse_size
    assert parse_size("4096") == 4096 and parse_size("2 KiB") == 2048 and parse_size("300KB") == 300_000
    assert parse_size("128MiB") == 134_217_728 and parse_size("128MB") == 128_000_000
    assert parse_size("1.5GiB") == 1_610_612_736 and parse_size("2GB") == 2_000_000_000
    with pytest.raises(SystemExit) as stopped:
        make_shards.main(["--shard-size", "128M"])
    assert (
        stopped.value.code == 2
        and "KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000)" in capsys.readouterr().err
    )
    for ambiguous in ("1mb", "12 parsecs", "-1MB", "MB"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
            parse_size(ambiguous)


def test_make_shards_builds_small_input_in_process_and_says_so(tmp_path, make_shards, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert make_shards.main(["--out", str(tmp_path / "demo"), "--demo-clips", "8", "--quiet"]) == 0
    assert "backend: local (--backend auto)" in capsys.readouterr().out


@pytest.mark.slow
def test_console_scripts_run_from_a_non_editable_install_in_a_fresh_venv(tmp_path):
    """A wheel built from the tree, installed without its dependencies into a new venv that borrows
    this venv's packages (nothing is downloaded); each command answers --help from outside the repo.
    The caller's PYTHONPATH is not passed on: a source tree on it would stand in for the install."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("elasticast-*.whl")
    assert any(name.startswith("jobs/") for name in zipfile.ZipFile(wheel).namelist())
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    site = next((fresh / "lib").glob("python3.*/site-packages"))
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed.pth").write_text("\n".join(borrowed) + "\n")  # dependencies only: .pth files there are not run
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(fresh / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    for command in COMMANDS.values():
        run = subprocess.run(
            [str(fresh / "bin" / command), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert run.returncode == 0 and "usage:" in run.stdout, (command, run.stderr[-2000:])
    where = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", "import jobs; print(jobs.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env=env,
    ).stdout
    assert str(site) in where
