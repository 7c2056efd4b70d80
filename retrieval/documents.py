"""Finding and loading source documents: strict UTF-8 text, clear errors for anything else.

``discover`` lists the text files under the given files and folders (deterministically), never
entering hidden folders, index directories or caches (``scan`` also says what it passed over);
``load_document`` reads one and raises ``InputError`` naming the file, the problem and the
fix for empty, binary, NUL-containing or non-UTF-8 files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from retrieval.base import Document
from retrieval.errors import InputError

TEXT_SUFFIXES = frozenset(
    {".txt", ".md", ".markdown", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml",
     ".toml", ".ini", ".cfg", ".html", ".htm", ".xml", ".tex", ".log", ".sh", ".js", ".ts", ".c",
     ".h", ".cpp", ".hpp", ".java", ".go", ".rs", ".rb", ".sql", ".org", ".adoc", ".text"}
)
BINARY_SNIFF_BYTES = 8192
INDEX_VERSION = re.compile(r"v\d{6}")
CACHEDIR_TAG = "CACHEDIR.TAG"  # the cache-directory convention that backup tools honour too
BINARY_SIGNATURES = {
    b"%PDF-": "PDF",
    b"\x89PNG\r\n\x1a\n": "PNG image",
    b"\xff\xd8\xff": "JPEG image",
    b"GIF87a": "GIF image",
    b"GIF89a": "GIF image",
    b"PK\x03\x04": "ZIP archive (or docx/xlsx/epub)",
    b"\x1f\x8b": "gzip archive",
    b"\x7fELF": "ELF executable",
    b"BZh": "bzip2 archive",
    b"\xfd7zXZ\x00": "xz archive",
    b"7z\xbc\xaf\x27\x1c": "7z archive",
    b"\xd0\xcf\x11\xe0": "MS Office (OLE) document",
    b"SQLite format 3\x00": "SQLite database",
    b"\x93NUMPY": "NumPy array",
}


def is_index_dir(path: Path) -> bool:
    """Whether ``path`` holds a ragpress index (a ``CURRENT`` pointer next to ``vNNNNNN`` versions)."""
    try:
        current = (path / "CURRENT").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return False
    return bool(INDEX_VERSION.fullmatch(current))


def _index_or_cache(path: Path, exclude: Sequence[Path]) -> Path | None:
    """The excluded directory ``path`` is, or the index it lies in, if any. A corpus may lie inside
    a cache directory (a Prefect home above a project, say); only what is in the cache is excluded."""
    if path in exclude:
        return path
    return next((folder for folder in (path, *path.parents) if is_index_dir(folder)), None)


def scan(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Text files under ``paths``, and the ones passed over with the reason (see ``discover``).

    Index directories (``exclude``, and any folder holding a ragpress index, however nested)
    and cache directories (``exclude``, and folders tagged with a ``CACHEDIR.TAG``) met under
    ``paths`` are never read; paths given inside an index or equal to an excluded directory,
    and folders that cannot be listed, come back with their reason.
    """
    excluded = [Path(p).expanduser().resolve() for p in exclude]
    found: set[Path] = set()
    passed: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not (path.is_file() or path.is_dir()):
            raise InputError(f"{path}: no such file or folder; check the path")
        resolved = path.resolve()
        inside = _index_or_cache(resolved, excluded)
        if inside is not None:
            passed.append((resolved, f"inside the index or cache directory {inside}; its files are never indexed"))
        elif path.is_file():
            found.add(resolved)
        else:
            _walk(resolved, excluded, found, passed)
    return sorted(found), passed


def _walk(root: Path, excluded: Sequence[Path], found: set[Path], passed: list[tuple[Path, str]]) -> None:
    """Add the text files under ``root`` to ``found``, pruning hidden, index and cache folders."""
    def unreadable(exc: OSError) -> None:
        passed.append((Path(exc.filename), f"cannot list this folder ({exc.strerror}); check its permissions"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        if here in excluded or is_index_dir(here) or (here / CACHEDIR_TAG).is_file():
            subfolders[:] = []
            continue
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))  # .git, .venv, ...
        for name in files:
            candidate = here / name
            if not name.startswith(".") and candidate.suffix.lower() in TEXT_SUFFIXES and candidate.is_file():
                found.add(candidate)


def discover(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Text files named in ``paths`` or found (recursively) in its folders: resolved, sorted, unique.

    A file named explicitly is kept whatever its suffix; inside folders only files with a
    text suffix (``TEXT_SUFFIXES``) count, and hidden files and folders are skipped, as are
    index and cache directories (see ``scan``).
    """
    return scan(paths, exclude)[0]


def _check_bytes(data: bytes, path: str) -> None:
    """Raise InputError if ``data`` is not usable as a text document."""
    for signature, kind in BINARY_SIGNATURES.items():
        if data.startswith(signature):
            raise InputError(f"{path}: binary file ({kind}), not text; convert it to UTF-8 text first (e.g. pdftotext)")
    nul = data.find(b"\x00", 0, BINARY_SNIFF_BYTES)
    if nul >= 0:
        raise InputError(
            f"{path}: binary file (NUL byte at offset {nul} in the first {BINARY_SNIFF_BYTES} bytes), not text; "
            "if it is UTF-16 text, re-encode it as UTF-8 (iconv -f utf-16 -t utf-8)"
        )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{path}: NUL byte at byte offset {nul}; remove NUL bytes (e.g. tr -d '\\000') and retry")


def decode_text(data: bytes, name: str) -> str:
    """``data`` as strict UTF-8 text, or ``InputError`` naming ``name``, the problem and the fix."""
    _check_bytes(data, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name}: invalid UTF-8 at byte offset {exc.start} ({exc.reason}); "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def load_document(path: str | Path, root: str | Path | None = None) -> Document:
    """Read ``path`` as a strict UTF-8 ``Document``.

    ``doc_id`` is the path relative to ``root`` (posix form) or, without a root, the resolved
    path; ``content_hash`` is the sha256 of the file's bytes.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None
    if not data or data.isspace():
        raise InputError(f"{path}: empty or whitespace-only file; nothing to index, remove it or add text")
    text = decode_text(data, str(path))
    if text.isspace():
        raise InputError(f"{path}: whitespace-only file; nothing to index, remove it or add text")
    doc_id = path.relative_to(Path(root).resolve()).as_posix() if root is not None else path.as_posix()
    return Document(doc_id=doc_id, source=str(path), text=text, content_hash=hashlib.sha256(data).hexdigest())
