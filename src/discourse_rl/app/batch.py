"""A class set's essays from what a teacher has at hand: pasted text holding several essays
split by a separator line, or a .zip of .txt and .docx files.

The page sends single .txt files' text itself and each .docx through `/api/docx`; a .zip goes to
`/api/unpack`, which returns its essays (and the files it skipped, with why) without labelling.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

from discourse_rl.app.docx import DocxError, docx_text

MAX_ZIP_MEMBERS = 1000
"""Files read from one .zip (folders and hidden files not counted)."""
MAX_ZIP_TOTAL = 50_000_000
"""Uncompressed bytes read from one .zip: a bound against zip bombs."""


class UnpackError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def split_pasted(text: str, separator: str = "===") -> list[str]:
    """The essays in `text`: the parts between lines whose stripped content is `separator`
    (blank parts dropped). Text without such a line is one essay."""
    sep = separator.strip()
    parts: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if sep and line.strip() == sep:
            parts.append([])
        else:
            parts[-1].append(line)
    out = ["".join(p).strip("\n") for p in parts]
    return [p for p in out if p.strip()]


def unpack_zip(
    data: bytes, max_essay_bytes: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, text) of each .txt and .docx file in a .zip, in name order, and (name, reason) of
    each file skipped (another type, not UTF-8, unreadable, too large)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError):
        raise UnpackError(400, "not a readable .zip file") from None
    essays: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    total = 0
    with zf:
        members = [
            i
            for i in zf.infolist()
            if not i.is_dir()
            and not any(
                part.startswith((".", "__MACOSX")) for part in PurePosixPath(i.filename).parts
            )
        ]
        if len(members) > MAX_ZIP_MEMBERS:
            raise UnpackError(
                413, f"the .zip holds {len(members):,} files; the limit is {MAX_ZIP_MEMBERS:,}"
            )
        for info in sorted(members, key=lambda i: i.filename):
            name = info.filename
            suffix = PurePosixPath(name).suffix.lower()
            if suffix not in (".txt", ".docx"):
                skipped.append((name, "not a .txt or .docx file"))
                continue
            total += info.file_size
            if total > MAX_ZIP_TOTAL:
                raise UnpackError(
                    413,
                    f"the .zip's files add up to more than {MAX_ZIP_TOTAL:,} bytes unpacked "
                    "(the limit for a .zip's content)",
                )
            try:
                data_i = zf.read(info)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError):
                skipped.append((name, "damaged or encrypted in the .zip"))
                continue
            try:
                text = docx_text(data_i, name) if suffix == ".docx" else data_i.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append((name, "not UTF-8 text"))
                continue
            except DocxError as exc:
                skipped.append((name, str(exc)))
                continue
            text = text.removeprefix("\ufeff")
            if not text.split():
                skipped.append((name, "empty"))
            elif len(text.encode("utf-8")) > max_essay_bytes:
                skipped.append(
                    (name, f"its text is over the essay limit of {max_essay_bytes:,} bytes")
                )
            else:
                essays.append((PurePosixPath(name).name, text))
    return essays, skipped
