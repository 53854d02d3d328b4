"""Read a Word (.docx) file's text: the page's uploads, `discourse-rl label essay.docx`, and the
.docx files inside a class set's .zip.

Only the main document's paragraphs are read (word/document.xml), tabs and line breaks kept,
paragraphs separated by a blank line. A file that is not a readable .docx (a corrupt zip, a
password-protected document, which Word stores as an encrypted OLE container, an old binary
.doc) raises `DocxError` with one line saying so; nothing is executed or fetched.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

from discourse_rl.core.common import DiscourseRLError

DOCX_MEDIA = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MAX_DOCX_XML = 20_000_000
"""Largest uncompressed word/document.xml read: a bound against zip bombs."""
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted .docx and old .doc files


class DocxError(DiscourseRLError):
    """The bytes are not a .docx this module can read; the message is one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def docx_text(data: bytes, name: str = "the file") -> str:
    """The text of a .docx file: its paragraphs separated by blank lines."""
    if data.startswith(_OLE):
        raise DocxError(
            f"{name} is password-protected (encrypted) or an old .doc file: open it in Word and "
            "save it as a .docx without a password"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            info = zf.getinfo("word/document.xml")
            if info.file_size > MAX_DOCX_XML:
                raise DocxError(
                    f"{name}: its text part is {info.file_size:,} bytes uncompressed; "
                    f"the limit is {MAX_DOCX_XML:,}",
                    413,
                )
            root = ET.fromstring(zf.read(info))
    except DocxError:
        raise
    except KeyError:
        raise DocxError(f"{name} is a zip file but not a Word document") from None
    except ET.ParseError:
        raise DocxError(f"{name} is damaged: its text part is not readable XML") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError):
        # RuntimeError: an encrypted zip member; NotImplementedError: an unknown compression.
        raise DocxError(
            f"{name} is not a readable .docx file (damaged or not Word 2007+)"
        ) from None
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        parts = []
        for node in p.iter():
            if node.tag == f"{_W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W}tab":
                parts.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                parts.append("\n")
        paragraphs.append("".join(parts))
    return "\n\n".join(p for p in paragraphs if p.strip())


def read_text_file(path: str | Path) -> str:
    """An essay file's text: a .docx through `docx_text`, anything else as UTF-8 text (a BOM
    dropped). Raises DiscourseRLError with one line for a missing or unreadable file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: no such file") from None
    except OSError as exc:
        raise DiscourseRLError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix.lower() == ".docx":
        return docx_text(data, str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DiscourseRLError(f"{path}: not UTF-8 text (save it as UTF-8, or as .docx)") from None
    return text.removeprefix("\ufeff")
