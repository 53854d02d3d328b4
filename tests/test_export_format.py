"""An exported model's format is checked before anything in it is trusted."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from discourse_rl.app.model_file import EXPORT_FORMAT, MANIFEST, open_model
from discourse_rl.core.common import DiscourseRLError


def _zip(path: Path, manifest: object) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"format": EXPORT_FORMAT + 1, "omitted": {}}, "made by a newer discourse-rl"),
        ({"omitted": {}}, "broken export.json"),
        ({"format": "1", "omitted": {}}, "names no export format"),
    ],
)
def test_an_export_of_another_format_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: object, message: str
) -> None:
    monkeypatch.setenv("DISCOURSE_RL_CACHE", str(tmp_path / "cache"))
    model = _zip(tmp_path / "model.zip", manifest)
    with pytest.raises(DiscourseRLError) as err:
        open_model(model)
    text = str(err.value)
    assert text.startswith(f"{model}: ") and message in text and "\n" not in text
    # Nothing of it was unpacked for a later load to trust.
    assert not list((tmp_path / "cache").glob("models/*/export.json"))
