"""What a file is, judged by its bytes, and its text, by a parser made for its type.

The type comes from the content: PDF and DOCX by their signatures, text by being
UTF-8 without NUL bytes (its kind, markdown or CSV..., from the declared type or
the file name, since text carries no signature). A declared type that contradicts
the content (a "PDF" that is text, a "text" file that is a PDF) is refused at
upload: guessing would index the wrong thing. A file whose bytes then fail to
parse (a truncated PDF, JSON that is not) fails ingestion with the parser's reason.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

TXT, MD, HTML, CSV, JSON = (
    "text/plain",
    "text/markdown",
    "text/html",
    "text/csv",
    "application/json",
)
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED = (TXT, MD, HTML, CSV, JSON, PDF, DOCX)
_TEXT_KINDS = (TXT, MD, HTML, CSV, JSON)
_BY_EXTENSION = {
    ".txt": TXT,
    ".text": TXT,
    ".md": MD,
    ".markdown": MD,
    ".html": HTML,
    ".htm": HTML,
    ".csv": CSV,
    ".json": JSON,
    ".pdf": PDF,
    ".docx": DOCX,
}
# Declared types that say nothing about the content.
_GENERIC = ("", "application/octet-stream", "binary/octet-stream")
_ALIASES = {"text/x-markdown": MD, "application/xhtml+xml": HTML, "text/json": JSON}


class UnsupportedType(ValueError):
    """The content is no type this service can read, or contradicts the declared one."""


class ExtractionError(ValueError):
    """The bytes are of the type, but its parser cannot read them."""


def _declared(mime_type: str) -> str:
    base = mime_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        # Not final: the head may end inside a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def detect_type(head: bytes, declared: str, filename: str, path: Path) -> str:
    """The file's MIME type from its first bytes (and, for a zip, its entries).

    UnsupportedType says why when the content is unreadable here or is not what
    the declared type says.
    """
    declared = _declared(declared)
    by_name = _BY_EXTENSION.get(PurePosixPath(filename).suffix.lower(), "")
    if head.startswith(b"%PDF-"):
        found = PDF
    elif head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError):
            raise UnsupportedType("the content is a damaged zip archive") from None
        if "word/document.xml" not in names:
            raise UnsupportedType("the content is a zip archive, not a DOCX document")
        found = DOCX
    elif _looks_like_text(head):
        if declared in _TEXT_KINDS:
            return declared
        if declared not in _GENERIC and declared != "text/plain":
            raise UnsupportedType(f"declared {declared} but the content is text")
        return by_name if by_name in _TEXT_KINDS else TXT
    else:
        raise UnsupportedType(
            "the content is binary of a type this service cannot read "
            "(it reads text, markdown, HTML, CSV, JSON, PDF and DOCX)"
        )
    if declared not in _GENERIC and declared != found:
        raise UnsupportedType(f"declared {declared} but the content is {found}")
    return found


def extract_text(data: bytes, mime_type: str) -> str:
    """The file's text, for chunking; ExtractionError when its parser cannot read it."""
    try:
        text = _EXTRACTORS[mime_type](data)
    except KeyError:
        raise ExtractionError(f"no text extraction for {mime_type}") from None
    except ExtractionError:
        raise
    except Exception as error:  # noqa: BLE001 - each parser has its own errors
        kind = mime_type.rsplit("/", 1)[-1].upper()
        if mime_type == DOCX:
            kind = "DOCX"
        raise ExtractionError(f"the {kind} cannot be read: {str(error)[:200]}") from None
    text = text.strip()
    if not text:
        raise ExtractionError("the file has no text to index")
    return text


def _plain(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExtractionError(f"the text is not UTF-8 (at byte {error.start})") from None


def _html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_plain(data), "html.parser")
    for hidden in soup(["script", "style", "noscript", "template"]):
        hidden.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader

    # pypdf logs each repair it tries on a damaged file; what matters reaches the
    # file's error instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        raise ExtractionError("the PDF is encrypted")
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


def _docx(data: bytes) -> str:
    import docx

    document = docx.Document(io.BytesIO(data))
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(parts)


def _csv(data: bytes) -> str:
    """One line per row, each value named by its column: a chunk keeps its headers."""
    text = _plain(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096])
    except csv.Error:
        dialect = csv.excel  # type: ignore[assignment]
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        return ""
    header, lines = rows[0], []
    for row in rows[1:]:
        named = (f"{header[i] if i < len(header) else i}: {value}" for i, value in enumerate(row))
        lines.append("; ".join(named))
    return "\n".join(lines) if lines else ", ".join(header)


def _json(data: bytes) -> str:
    """One line per leaf value, named by its path: keys are searchable words too."""
    try:
        value = json.loads(_plain(data))
    except json.JSONDecodeError as error:
        raise ExtractionError(f"the JSON cannot be read: {error}") from None
    lines: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}[{index}]")
        else:
            lines.append(f"{path}: {node}" if path else str(node))

    walk(value, "")
    return "\n".join(lines)


_EXTRACTORS = {TXT: _plain, MD: _plain, HTML: _html, PDF: _pdf, DOCX: _docx, CSV: _csv, JSON: _json}
