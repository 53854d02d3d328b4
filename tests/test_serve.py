"""The web server through Starlette's test client, and the page in a real headless browser."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from discourse_rl import Labeller
from discourse_rl.app.cli import main
from discourse_rl.app.serve import MAX_ESSAY_BYTES, create_app
from discourse_rl.core.data import CLASSES, read_essay, sample_dir
from tests.tiny_run import make_tiny_run


@pytest.fixture(scope="module")
def labeller(tmp_path_factory: pytest.TempPathFactory) -> Labeller:
    return Labeller.load(make_tiny_run(tmp_path_factory.mktemp("serve")), "ner-naive")


@pytest.fixture(scope="module")
def client(labeller: Labeller) -> Iterator[TestClient]:
    with TestClient(create_app(labeller), raise_server_exceptions=False) as c:
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
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/api/label", json={"text": secret})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; see the server's log"}
    assert "Traceback" not in r.text and secret not in r.text
    assert secret not in caplog.text and "RuntimeError" in caplog.text
    assert client_404(app)


def client_404(app: object) -> bool:
    with TestClient(app) as c:  # type: ignore[arg-type]
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


def make_docx(paragraphs: list[str]) -> bytes:
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


# ---------------------------------------------------------------------------------------------
# A real browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(labeller: Labeller) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(labeller), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def chrome(browser: str, driver: str, width: int = 1200, height: int = 1600):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.skipif(
    _chromium() is None,
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver; .ci/run does it)",
)
def test_page_in_a_real_browser(live_server: str, tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    found = _chromium()
    assert found is not None
    driver = chrome(*found)
    try:
        driver.get(live_server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#legend li")))
        text = _essay()
        box = driver.find_element(By.ID, "essay")
        # Typing a whole essay key by key is slow: set it as a paste would, then fire input.
        driver.execute_script(
            "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
            box,
            text,
        )
        driver.find_element(By.ID, "go").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#essay-view mark.element")))
        marks = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")
        assert marks
        assert {m.get_attribute("data-type") for m in marks} <= set(CLASSES)
        assert "confidence" in (marks[0].get_attribute("title") or "")
        summary = driver.find_element(By.ID, "summary")
        assert summary.is_displayed() and "types present" in summary.text
        legend = driver.find_element(By.ID, "legend").text
        assert "held-out F1" in legend
        view = driver.find_element(By.ID, "essay-view").get_attribute("textContent") or ""
        tags = "".join(m.find_element(By.CSS_SELECTOR, ".tag").text for m in marks)
        assert len(view) == len(text) + len(tags.replace("\n", ""))  # the essay, whole
        assert json.loads(driver.execute_script("return JSON.stringify(window.fetch ? 1 : 0)")) == 1

        # Opening a .docx fills the box with its text (through /api/docx).
        path = tmp_path / "essay.docx"
        path.write_bytes(make_docx(["Uploaded essay 😀", "Second paragraph."]))
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(lambda d: "Second paragraph." in (box.get_attribute("value") or ""))
        assert box.get_attribute("value") == "Uploaded essay 😀\n\nSecond paragraph."
    finally:
        driver.quit()
