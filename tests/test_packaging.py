"""What a non-editable install gets: the wheel built from setup.cfg (what `pip install .` puts into the systemd
unit's /opt/smartpos venv) must carry the Alembic migrations, the simulator profiles and the shipped config, and run
from those files alone. `make test` installs the project editable, which would hide a file the wheel leaves out."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("terminal", "drivers", "offline_queue", "config", "headoffice", "protocol")
DATA = ("*.toml", "*.service", "*.ini", "*.mako", "*.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built once for this module's tests."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("smartpos-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _shipped_files() -> set[str]:
    """Every file of ours a running terminal or head office may open, as paths inside the wheel."""
    files = set()
    for name in PACKAGES:
        for pattern in DATA:
            for path in (ROOT / name).rglob(pattern):
                if "__pycache__" not in path.parts:
                    files.add(path.relative_to(ROOT).as_posix())
    return files


def test_the_wheel_carries_every_migration_profile_and_config_file(wheel):
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
    shipped = _shipped_files()
    assert any(n.startswith("offline_queue/migrations/versions/") for n in shipped)  # the check sees them
    assert any(n.startswith("drivers/simulators/profiles/") for n in shipped)
    assert sorted(shipped - names) == []


def _newest(versions: Path) -> str:
    """The revision id the newest migration file declares (files are numbered in order)."""
    newest = max(versions.glob("[0-9]*.py"))
    match = re.search(r"""^revision(?:: str)? = ["']([^"']+)["']""", newest.read_text(), re.MULTILINE)
    assert match, newest
    return match.group(1)


def test_a_wheel_install_migrates_both_databases_from_its_own_files(wheel, tmp_path):
    """Unpacked first on the path, the wheel's modules are the ones imported (not the work tree's): the queue and
    head office's schema are created by the migrations inside it, and a simulator profile loads from it."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as built:
        built.extractall(site)
    script = (
        "import sqlite3, sys, pathlib\n"
        "import offline_queue.store, headoffice.db, drivers.simulators.emv_card as card\n"
        "site = pathlib.Path(sys.argv[1])\n"
        "for module in (offline_queue.store, headoffice.db, card):\n"
        "    assert pathlib.Path(module.__file__).is_relative_to(site), module.__file__\n"
        "db = site.parent / 'queue.db'\n"
        "offline_queue.store.QueueStore.open(db, terminal_id='T-WHEEL').close()\n"
        "print('queue', sqlite3.connect(db).execute('SELECT version_num FROM alembic_version').fetchone()[0])\n"
        "print('profile', card.load_profile('visa').__class__.__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "run"
    work.mkdir()
    queue = subprocess.run([sys.executable, "-c", script, str(site)], capture_output=True, text=True, cwd=work,
                           env=env, timeout=60)
    assert queue.returncode == 0, queue.stderr
    assert f"queue {_newest(ROOT / 'offline_queue/migrations/versions')}" in queue.stdout
    assert "profile CardProfile" in queue.stdout
    home = tmp_path / "hq"
    hq = subprocess.run([sys.executable, "-m", "headoffice.cli", "db", "upgrade", "--home", str(home)],
                        capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert hq.returncode == 0, hq.stdout + hq.stderr
    hq_db = sqlite3.connect(home / "headoffice.sqlite3")
    revision = hq_db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert revision == _newest(ROOT / "headoffice/migrations/versions")
