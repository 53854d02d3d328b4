"""The web server through Starlette's test client, and the page in a real headless browser."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from discourse_rl import Labeller
from discourse_rl.app.cli import main
from discourse_rl.app.labeller import SCHEMA_VERSION
from discourse_rl.app.serve import MAX_ESSAY_BYTES, create_app
from discourse_rl.core.data import CLASSES, read_essay, sample_dir

LOCAL = "http://127.0.0.1:8000"  # the Host a page served on loopback sends


@pytest.fixture(scope="module")
def labeller(served_run: Path) -> Labeller:
    return Labeller.load(served_run, "ner-naive")


@pytest.fixture(scope="module")
def client(labeller: Labeller) -> Iterator[TestClient]:
    with TestClient(create_app(labeller), raise_server_exceptions=False, base_url=LOCAL) as c:
        yield c


def _essay() -> str:
    return read_essay(sorted((sample_dir() / "test").glob("*.txt"))[0]).text


def test_label_returns_the_jsonl_schema_and_a_summary(
    client: TestClient, labeller: Labeller
) -> None:
    text = "Phones help.\r\n\r\n\tThey 😀 really do: élan!\n\n" + _essay()
    r = client.post("/api/label", json={"text": text})
    assert r.status_code == 200
    body = r.json()
    assert body["elements"] == [el.to_json() for el in labeller.label(text)]
    assert body["elements"], "the tiny model labels something"
    for el in body["elements"]:
        assert text[el["char_start"] : el["char_end"]] == el["text"]
    assert set(body["summary"]["counts"]) == set(CLASSES)
    assert body["n_words"] == len(text.split()) and body["stage"] == "ner-naive"
    assert body["schema_version"] == SCHEMA_VERSION
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_health_info_and_page(client: TestClient) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["stage"] == "ner-naive" and "ner-naive" in info["stages"]
    assert set(info["scores"]["ner-naive"]["per_type"]) == set(CLASSES)
    assert "CC BY-NC-SA 4.0" in info["licence"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another site
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"text": "x " * (MAX_ESSAY_BYTES // 2 + 1)}}, 413, "too large"),
        ({"content": b"a" * (7 * MAX_ESSAY_BYTES), "headers": JSON}, 413, "too large"),
        ({"json": {"text": ""}}, 400, "empty"),
        ({"json": {"text": " \n\t "}}, 400, "empty"),
        ({"json": {"essay": "hello"}}, 400, '"text"'),
        ({"json": ["hello"]}, 400, '"text"'),
        ({"content": b'{"text": "\xff\xfe bad"}', "headers": JSON}, 400, "UTF-8"),
        ({"content": b"\x00\x01\x02", "headers": JSON}, 400, "JSON"),
        ({"content": b'{"text": "\\ud800"}', "headers": JSON}, 400, "Unicode"),
        (
            {"content": b"plain essay", "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
        ({"data": {"text": "form essay"}}, 415, "application/json"),
    ],
)
def test_bad_input_gets_a_clear_status_and_message(
    client: TestClient, kwargs: dict[str, object], status: int, message: str
) -> None:
    r = client.post("/api/label", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status
    assert message in r.json()["error"]


def test_failures_reach_the_client_as_one_line_without_traceback(
    labeller: Labeller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "my secret essay words"

    def broken(text: str) -> list[object]:
        raise RuntimeError(f"boom while labelling {text}")

    app = create_app(labeller)
    monkeypatch.setattr(labeller, "label", broken)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as c:
        r = c.post("/api/label", json={"text": secret})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; see the server's log"}
    assert "Traceback" not in r.text and secret not in r.text
    assert secret not in caplog.text and "RuntimeError" in caplog.text
    assert client_404(app)


def client_404(app: object) -> bool:
    with TestClient(app, base_url=LOCAL) as c:  # type: ignore[arg-type]
        r = c.get("/nowhere")
    return r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_serve_stops_at_start_on_a_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err
    (tmp_path / "ner").mkdir()
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a trained run" in capsys.readouterr().err


def make_docx(paragraphs: list[str], extra: bytes = b"") -> bytes:
    """A minimal Word file: one w:p per paragraph, tabs as w:tab."""
    import io
    import zipfile
    from xml.sax.saxutils import escape

    def run(text: str) -> str:
        parts = [f'<w:t xml:space="preserve">{escape(t)}</w:t>' for t in text.split("\t")]
        return "<w:r>" + "<w:tab/>".join(parts) + "</w:r>"

    body = "".join(f"<w:p>{run(p)}</w:p>" for p in paragraphs)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w='
        '"http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/document.xml", xml)
        if extra:  # a photo, stored as it is (photos do not compress)
            zf.writestr("word/media/image1.jpeg", extra, compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


DOCX = {"content-type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}


def test_docx_upload_gives_its_paragraphs(client: TestClient) -> None:
    data = make_docx(["Phones & school 😀", "", "\tFirst, <they> help."])
    r = client.post("/api/docx", content=data, headers=DOCX)
    assert r.status_code == 200
    assert r.json() == {"text": "Phones & school 😀\n\n\tFirst, <they> help."}
    assert client.post("/api/docx", content=b"PK not a zip", headers=DOCX).status_code == 400
    assert client.post("/api/docx", content=make_docx([" "]), headers=DOCX).status_code == 400
    assert client.post("/api/docx", content=data, headers=JSON).status_code == 415


def test_docx_errors_are_one_line_and_name_the_right_limit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from discourse_rl.app import serve

    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600  # how Word stores a password
    r = client.post("/api/docx", content=ole, headers=DOCX)
    assert r.status_code == 400 and "password" in r.json()["error"]
    truncated = make_docx(["An essay."])[:-30]
    for bad in (truncated, b"PK\x03\x04 damaged", b"\x00" * 100):
        r = client.post("/api/docx", content=bad, headers=DOCX)
        assert r.status_code == 400 and "\n" not in r.json()["error"]
        assert "Traceback" not in r.text
    # A .docx larger than the essay limit (a photo) is read: its limit is its own.
    photo = make_docx(["A short essay with a photo."], extra=os.urandom(2 * MAX_ESSAY_BYTES))
    r = client.post("/api/docx", content=photo, headers=DOCX)
    assert r.status_code == 200 and r.json()["text"] == "A short essay with a photo."
    monkeypatch.setattr(serve, "MAX_DOCX_BYTES", 1000)
    r = client.post("/api/docx", content=photo, headers=DOCX)
    assert r.status_code == 413 and "limit for a .docx upload is 1,000 bytes" in r.json()["error"]
    monkeypatch.undo()
    long_text = make_docx(["word " * (MAX_ESSAY_BYTES // 4)])
    r = client.post("/api/docx", content=long_text, headers=DOCX)
    assert r.status_code == 413 and "limit for an essay's text" in r.json()["error"]


def test_label_reads_a_docx_and_shows_the_definitions(
    served_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from discourse_rl.app.feedback import DEFINITIONS

    path = tmp_path / "essay.docx"
    path.write_bytes(make_docx(_essay().split("\n\n")))
    assert main(["label", str(path), "--model", str(served_run), "--stage", "ner-naive"]) == 0
    out = capsys.readouterr().out
    assert DEFINITIONS["Rebuttal"][:40] in out.replace("\n", " ")
    assert main(["label", str(path), "--model", str(served_run), "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["schema_version"] == SCHEMA_VERSION
    (tmp_path / "bad.docx").write_bytes(b"not a zip")
    assert main(["label", str(tmp_path / "bad.docx"), "--model", str(served_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.docx" in err


def test_label_batch_labels_each_essay_like_label(client: TestClient, labeller: Labeller) -> None:
    essays = [t.read_text(encoding="utf-8") for t in sorted((sample_dir() / "test").glob("*.txt"))]
    r = client.post(
        "/api/label-batch",
        json={"essays": [{"name": f"e{i}.txt", "text": t} for i, t in enumerate(essays[:3])]},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["schema_version"] == SCHEMA_VERSION and body["stage"] == "ner-naive"
    assert [e["name"] for e in body["essays"]] == ["e0.txt", "e1.txt", "e2.txt"]
    for got, text in zip(body["essays"], essays[:3], strict=True):
        assert got["elements"] == [el.to_json() for el in labeller.label(text)]
        assert set(got["summary"]["not_found"]) <= set(CLASSES)
    pasted = "First essay here.\n===\nSecond one, longer.\n  ===  \n\n===\nThird."
    r = client.post("/api/label-batch", json={"text": pasted})
    assert [e["text"] for e in r.json()["essays"]] == [
        "First essay here.",
        "Second one, longer.",
        "Third.",
    ]
    assert [e["name"] for e in r.json()["essays"]] == ["Essay 1", "Essay 2", "Essay 3"]
    r = client.post("/api/label-batch", json={"text": "A\n---\nB", "separator": "---"})
    assert len(r.json()["essays"]) == 2


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"essays": []}, 400, "empty"),
        ({}, 400, "either"),
        ({"essays": [{"name": "a", "text": "x"}], "text": "y"}, 400, "either"),
        ({"essays": [{"name": "a", "text": "ok"}, {"name": "b.txt", "text": " "}]}, 400, "b.txt"),
        ({"essays": [{"name": "big.txt", "text": "x " * MAX_ESSAY_BYTES}]}, 413, "big.txt"),
        ({"essays": [{"name": "a", "text": "x"}] * 201}, 413, "limit for a class set"),
        ({"essays": [{"text": "no name"}]}, 400, "name"),
        ({"text": "==="}, 400, "empty"),
    ],
)
def test_label_batch_bad_input(
    client: TestClient, payload: dict[str, object], status: int, message: str
) -> None:
    r = client.post("/api/label-batch", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "\n" not in r.json()["error"]


def test_summary_of_corrected_labels(client: TestClient) -> None:
    elements = [
        {"type": "Lead", "word_start": 0, "word_end": 2, "char_start": 0, "char_end": 9,
         "text": "Phones do", "confidence": 0.2},
        {"type": "Claim", "word_start": 2, "word_end": 4, "char_start": 10, "char_end": 18,
         "text": "help us.", "confidence": None, "changed": "added"},
    ]  # fmt: skip
    r = client.post("/api/summary", json={"elements": elements})
    assert r.status_code == 200
    s = r.json()
    assert s["counts"]["Lead"] == 1 and s["counts"]["Claim"] == 1
    assert "Rebuttal" in s["not_found"] and s["unsure"] == [0]  # the teacher's is not unsure
    assert any(m.startswith("No Rebuttal found — ") for m in s["missing"])
    bad = client.post("/api/summary", json={"elements": [{"type": "Thesis"}]})
    assert bad.status_code == 400 and "type" in bad.json()["error"]


def test_unpack_reads_txt_and_docx_from_a_zip(client: TestClient) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("class/b.txt", "\ufeffSecond essay.")
        zf.writestr("class/a.docx", make_docx(["First essay.", "Its second paragraph."]))
        zf.writestr("class/photo.png", b"\x89PNG")
        zf.writestr("class/latin1.txt", "caf\xe9".encode("latin-1"))
        zf.writestr("class/broken.docx", b"not a docx")
        zf.writestr("__MACOSX/class/._a.docx", b"junk")
    r = client.post(
        "/api/unpack", content=buf.getvalue(), headers={"content-type": "application/zip"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["essays"] == [
        {"name": "a.docx", "text": "First essay.\n\nIts second paragraph."},
        {"name": "b.txt", "text": "Second essay."},
    ]
    assert {s["name"] for s in body["skipped"]} == {
        "class/photo.png",
        "class/latin1.txt",
        "class/broken.docx",
    }
    bad = client.post("/api/unpack", content=b"nope", headers={"content-type": "application/zip"})
    assert bad.status_code == 400 and "zip" in bad.json()["error"]


def _class_set(name: str = "Period 3") -> dict[str, object]:
    el = {"type": "Claim", "word_start": 0, "word_end": 2, "char_start": 0, "char_end": 9,
          "text": "Phones do", "confidence": 0.61}  # fmt: skip
    fixed = el | {"type": "Position", "changed": "type", "model_type": "Claim"}
    return {
        "name": name,
        "stage": "ner-naive",
        "essays": [
            {"name": "a.txt", "text": "Phones do help.", "elements": [el], "corrected": [fixed]},
            {"name": "b.txt", "text": "Another essay.", "elements": [], "corrected": None},
        ],
    }


def test_class_sets_are_saved_only_on_save_and_survive_a_restart(
    labeller: Labeller, tmp_path: Path
) -> None:
    from discourse_rl.app.serve import ServeOptions
    from discourse_rl.app.store import ClassSetStore

    path = tmp_path / "store" / "sets.sqlite3"
    options = ServeOptions(store=ClassSetStore(path))
    with TestClient(create_app(labeller, options), base_url=LOCAL) as c:
        c.post("/api/label", json={"text": _essay()})
        listed = c.get("/api/class-sets").json()
        assert listed["class_sets"] == [] and not path.exists()  # nothing kept before Save
        saved = c.post("/api/class-sets", json=_class_set()).json()
        assert path.is_file() and saved["n_essays"] == 2 and saved["n_corrected"] == 1
        again = c.put(f"/api/class-sets/{saved['id']}", json=_class_set("Period 3, checked"))
        assert again.status_code == 200
        assert c.post("/api/class-sets", json=_class_set("Period 4")).status_code == 200
        assert c.post("/api/class-sets", json={"name": "x"}).status_code == 400
    options = ServeOptions(store=ClassSetStore(path))  # a new server on the same file
    with TestClient(create_app(labeller, options), base_url=LOCAL) as c:
        names = [s["name"] for s in c.get("/api/class-sets").json()["class_sets"]]
        assert sorted(names) == ["Period 3, checked", "Period 4"]
        got = c.get(f"/api/class-sets/{saved['id']}").json()
        assert got["essays"][0]["corrected"][0]["type"] == "Position"
        assert got["essays"][0]["corrected"][0]["model_type"] == "Claim"
        assert got["essays"][1]["corrected"] is None and got["name"] == "Period 3, checked"
        assert c.delete(f"/api/class-sets/{saved['id']}").json() == {"deleted": saved["id"]}
        assert c.get(f"/api/class-sets/{saved['id']}").status_code == 404
        assert c.delete(f"/api/class-sets/{saved['id']}").status_code == 404
        assert len(c.get("/api/class-sets").json()["class_sets"]) == 1
    with TestClient(create_app(labeller), base_url=LOCAL) as c:  # saving off
        assert c.post("/api/class-sets", json=_class_set()).status_code == 404
        assert c.get("/api/info").json()["store"] is False


def test_openapi_lists_the_typed_endpoints(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    for path in ("/api/label", "/api/label-batch", "/api/info", "/api/class-sets", "/api/docx"):
        assert path in doc["paths"]
    schemas = doc["components"]["schemas"]
    assert {"LabelResponse", "BatchResponse", "LabelRequest", "ClassSetIn"} <= set(schemas)
    assert "schema_version" in schemas["LabelResponse"]["required"]
    ok = doc["paths"]["/api/label"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/LabelResponse")


def test_info_has_definitions_recall_and_a_true_privacy_line(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert set(info["definitions"]) == set(CLASSES)
    assert info["schema_version"] == SCHEMA_VERSION and info["token_required"] is False
    assert "this computer" in info["privacy"]
    scores = info["scores"]["ner-naive"]
    assert set(scores["recall"]) <= set(CLASSES) and scores["recall"]
    assert info["limits"]["docx_bytes"] > info["limits"]["essay_bytes"]


def test_not_found_says_how_often_the_model_finds_the_type() -> None:
    from discourse_rl.app.feedback import not_found_sentence

    assert not_found_sentence("Rebuttal", 0.26, 0.3) == (
        "No Rebuttal found — the model finds about 3 in 10 Rebuttals"
    )
    assert "nearly all" in not_found_sentence("Lead", 0.97)
    assert "almost no" in not_found_sentence("Rebuttal", 0.02)
    f1_only = not_found_sentence("Counterclaim", None, 0.41)
    assert "held-out F1 on Counterclaims is 0.41" in f1_only and "not recorded" in f1_only
    assert "not known" in not_found_sentence("Counterclaim")


def test_jsonl_lines_carry_the_schema_version(labeller: Labeller) -> None:
    from discourse_rl.app.labeller import elements_jsonl

    lines = elements_jsonl({"a": labeller.label(_essay()), "b": []}, "ner-naive").splitlines()
    assert [json.loads(x)["schema_version"] for x in lines] == [SCHEMA_VERSION] * 2


# ---------------------------------------------------------------------------------------------
# Safe serving


def test_a_foreign_host_header_is_refused(client: TestClient) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        r = client.get("/api/info", headers={"host": host})
        assert r.status_code == 421 and "host names" in r.json()["error"]
        assert (
            client.post("/api/label", json={"text": "x"}, headers={"host": host}).status_code == 421
        )
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/health", headers={"host": host}).status_code == 200


def test_serve_beyond_loopback_needs_the_option(
    served_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(served_run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err


def test_remote_serving_needs_the_token_on_every_api_call(labeller: Labeller) -> None:
    from discourse_rl.app.security import Access
    from discourse_rl.app.serve import ServeOptions

    access = Access.for_bind("0.0.0.0", allow_remote=True, extra_hosts=["school.example"])
    assert access.token and len(access.token) >= 24
    options = ServeOptions(access=access, address="http://0.0.0.0:8000")
    with TestClient(
        create_app(labeller, options),
        raise_server_exceptions=False,
        base_url="http://school.example",
    ) as c:
        assert c.get("/").status_code == 200  # the page itself holds nothing
        for method, path in (("get", "/api/info"), ("get", "/api/health"), ("post", "/api/label"),
                             ("get", "/api/openapi.json"), ("get", "/api/class-sets")):  # fmt: skip
            r = getattr(c, method)(path)
            assert r.status_code == 401 and "token" in r.json()["error"]
        wrong = {"authorization": "Bearer nope"}
        assert c.get("/api/info", headers=wrong).status_code == 401
        auth = {"authorization": f"Bearer {access.token}"}
        info = c.get("/api/info", headers=auth).json()
        assert info["token_required"] is True
        assert "network" in info["privacy"] and "this computer" not in info["privacy"]
        r = c.post("/api/label", json={"text": _essay()}, headers=auth)
        assert r.status_code == 200
        r = c.get("/api/info", headers=auth | {"host": "evil.example"})
        assert r.status_code == 421


def test_a_full_queue_answers_503_with_retry_after() -> None:
    import asyncio

    from discourse_rl.app.serve import ApiError, LabelQueue

    async def scenario() -> ApiError | None:
        queue = LabelQueue(2)
        async with queue.slot(), queue.slot():
            try:
                async with queue.slot():
                    return None
            except ApiError as exc:
                return exc

    exc = asyncio.run(scenario())
    assert exc is not None and exc.status == 503
    assert int(exc.headers["Retry-After"]) >= 1 and "busy" in exc.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_full_queue_over_http(labeller: Labeller, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slow requests with room for one waiting: the third gets 503 and Retry-After."""
    import urllib.error
    import urllib.request

    from discourse_rl.app.serve import ServeOptions

    app = create_app(labeller, ServeOptions(queue_limit=1))
    server, url, slow = _start_held(app, labeller, monkeypatch)
    codes: list[int] = []

    def post() -> None:
        try:
            with urllib.request.urlopen(_label_request(url), timeout=30) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
            codes.append(int(exc.headers["Retry-After"]))

    try:
        first = threading.Thread(target=post)
        first.start()
        time.sleep(0.5)
        post()
        slow.set()
        first.join()
    finally:
        server.should_exit = True
    assert sorted(codes)[:2] == [1, 200] or 503 in codes, codes
    assert 503 in codes and 200 in codes


def _start_held(
    app: object, labeller: Labeller, monkeypatch: pytest.MonkeyPatch
) -> tuple[object, str, threading.Event]:
    """`app` served over HTTP with its labeller held (each label call waits for the event)."""
    release = threading.Event()

    def label(text: str) -> list[object]:
        release.wait(10)
        return []

    monkeypatch.setattr(labeller, "label", label)
    server, url = _start(app)
    return server, url, release


def _label_request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url + "/api/label", data=b'{"text": "a b"}',
                                  headers={"Content-Type": "application/json"})  # fmt: skip


def _start(app: object) -> tuple[object, str]:
    import uvicorn

    from discourse_rl.app.serve import _server_class

    port = _free_port()
    server = _server_class()(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
    )
    server.gate = app.state.gate  # type: ignore[attr-defined]
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(
    labeller: Labeller, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import urllib.error
    import urllib.request

    server, url, release = _start_held(create_app(labeller), labeller, monkeypatch)
    results: dict[str, object] = {}

    def in_flight() -> None:
        with urllib.request.urlopen(_label_request(url), timeout=30) as r:
            results["in_flight"] = r.status

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.5)
    server.handle_exit(signal.SIGTERM, None)  # type: ignore[attr-defined]
    try:
        urllib.request.urlopen(url + "/api/health", timeout=10)
    except urllib.error.HTTPError as exc:
        results["new"] = exc.code
        results["retry"] = exc.headers.get("Retry-After")
    assert not server.should_exit  # type: ignore[attr-defined]
    release.set()
    t.join(10)
    for _ in range(100):
        if server.should_exit:  # type: ignore[attr-defined]
            break
        time.sleep(0.05)
    assert results == {"in_flight": 200, "new": 503, "retry": "30"}
    assert server.should_exit  # type: ignore[attr-defined]


def test_serve_exits_0_on_sigterm(served_run: Path, tmp_path: Path) -> None:
    import os as _os
    import signal
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    env = dict(_os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    cmd = [sys.executable, "-m", "discourse_rl", "serve", "--model", str(served_run),
           "--port", str(port), "--store", str(tmp_path / "s.sqlite3")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert b"discourse-rl: stopped" in out and b"Traceback" not in out
