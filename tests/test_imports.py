"""Importing the libraries stays light: no Prefect and no torch until a function needs them."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("prefect", "torch")
# The chunk-cache KV modules compute on tensors throughout and are imported only where KV reuse is
# asked for (inside functions of eval/ and flows/); the package itself and its mode table stay light.
TENSOR_MODULES = "compression.kv."
LIGHT_KV_MODULES = ("compression.kv.modes",)


def library_modules(package: str) -> list[str]:
    """Every module of ``package`` (found on disk, so a new module is covered without listing it)."""
    names = [package]
    for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
        if not info.name.startswith(TENSOR_MODULES) or info.name in LIGHT_KV_MODULES:
            names.append(info.name)
    return names


def heavy_modules_after_importing(modules: list[str]) -> list[str]:
    """The heavy top-level packages a fresh interpreter holds after importing ``modules``."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# LangChain adapters import langchain_core at the top by design (an optional integration); they
# still must not pull in Prefect or torch.
def test_importing_the_libraries_loads_neither_prefect_nor_torch():
    modules = [name for package in ("filestore", "retrieval", "compression", "generation", "pipeline", "eval") for name in library_modules(package)]
    assert heavy_modules_after_importing(modules) == []


def test_the_check_sees_a_heavy_import():
    """The same check reports torch for a module that imports it (so an empty answer means something)."""
    assert heavy_modules_after_importing(["compression.kv.rope"]) == ["torch"]
    assert "compression.llmlingua.scoring" in library_modules("compression")
