"""One import package, `exitguard`, and nothing else: pyproject.toml lists every package folder, and the
wheel built from it holds `exitguard` alone at the top, with every module of the source folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = {"engine": "exitguard", "states": "exitguard.states"}
"""Each source folder and the package it installs as (pyproject.toml's package-dir)."""


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def package_of(folder: Path, root: Path = REPO) -> str:
    """engine/exchange -> exitguard.exchange, states -> exitguard.states."""
    top, *rest = folder.relative_to(root).parts
    return ".".join([SOURCES[top], *rest])


def source_folders() -> list[Path]:
    return [folder for top in SOURCES for folder in [REPO / top, *sorted((REPO / top).rglob("*"))]
            if folder.is_dir() and folder.name != "__pycache__"]


def test_package_dir_maps_the_two_source_folders() -> None:
    assert pyproject()["tool"]["setuptools"]["package-dir"] == {package: top for top, package in SOURCES.items()}


def test_packages_list_equals_the_folders_with_an_init() -> None:
    listed = pyproject()["tool"]["setuptools"]["packages"]
    folders = sorted(package_of(folder) for folder in source_folders() if (folder / "__init__.py").is_file())

    assert sorted(listed) == folders
    assert len(listed) == len(set(listed))


def test_every_folder_with_modules_is_a_package() -> None:
    # A folder of .py files without __init__.py would be left out of the wheel without a word.
    loose = [str(folder.relative_to(REPO)) for folder in source_folders()
             if any(folder.glob("*.py")) and not (folder / "__init__.py").is_file()]

    assert loose == []


def test_wheel_holds_only_exitguard_with_every_module(tmp_path: Path) -> None:
    # Built from a copy, so no build/ or egg-info lands in the checkout. About 3 s (.ci/run builds one too).
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top in SOURCES:
        shutil.copytree(REPO / top, source / top, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("exitguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"exitguard"}
    modules = {"/".join([*package_of(path.parent, source).split("."), path.name])
               for top in SOURCES for path in (source / top).rglob("*.py")}
    assert modules <= set(names), f"missing from the wheel: {sorted(modules - set(names))}"
