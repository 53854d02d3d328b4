"""The labelling page in a real headless browser (Debian's chromium and chromium-driver):
a class set from files, the table, an essay, keyboard access, corrections, downloads, the print
view, saved class sets, and axe-core's accessibility check run inside the page.

axe-core comes from the npm registry at test time (`make test` installs it into .cache/axe,
ignored by git; DISCOURSE_RL_AXE may name another axe.min.js); without it the accessibility
check is skipped with a line saying so, as the whole module is without a browser.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from discourse_rl import Labeller
from discourse_rl.app.labeller import SCHEMA_VERSION
from discourse_rl.app.serve import ServeOptions, create_app
from discourse_rl.app.store import ClassSetStore
from discourse_rl.core.data import CLASSES, read_essay, sample_dir
from tests.test_serve import make_docx

REPO = Path(__file__).resolve().parents[1]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def axe_script() -> Path | None:
    """axe-core's browser build, installed from the npm registry (never a copy in the repo)."""
    given = os.environ.get("DISCOURSE_RL_AXE")
    candidates = [Path(given)] if given else []
    candidates.append(REPO / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js")
    return next((p for p in candidates if p.is_file()), None)


pytestmark = pytest.mark.skipif(
    _chromium() is None,
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver; .ci/run does it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def labeller(served_run: Path) -> Labeller:
    return Labeller.load(served_run, "ner-naive")


@pytest.fixture(scope="module")
def live_server(labeller: Labeller, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = ClassSetStore(tmp_path_factory.mktemp("store") / "sets.sqlite3")
    yield from _serve(create_app(labeller, ServeOptions(store=store)))


def chrome(width: int = 1200, height: int = 1600, downloads: Path | None = None) -> Any:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = _chromium()
    assert found is not None
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
        )
    return driver


def run_axe(driver: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical in the page as it is now."""
    script = axe_script()
    if script is None:
        pytest.skip(
            "axe-core is not installed: the accessibility check is skipped "
            "(make test installs it with npm into .cache/axe; or set DISCOURSE_RL_AXE)"
        )
    driver.execute_script(script.read_text(encoding="utf-8"))
    driver.set_script_timeout(120)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(JSON.stringify(r.violations)), e => done(JSON.stringify(String(e))));"
    )
    violations = json.loads(result)
    assert isinstance(violations, list), violations
    return [v for v in violations if v.get("impact") in ("serious", "critical")]


def _describe(violations: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes'][:3]]}" for v in violations
    )


def _essays() -> list[str]:
    return [read_essay(p).text for p in sorted((sample_dir() / "test").glob("*.txt"))]


def _wait_file(folder: Path, suffix: str, timeout: float = 30) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = [p for p in folder.iterdir() if p.name.endswith(suffix)]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {suffix} downloaded into {folder}: {list(folder.iterdir())}")


def test_class_set_correction_download_print_and_accessibility(
    live_server: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    texts = _essays()[:3]
    files = []
    for i, text in enumerate(texts[:2]):
        path = tmp_path / f"student{i + 1}.txt"
        path.write_text(text, encoding="utf-8")
        files.append(path)
    docx = tmp_path / "student3.docx"
    docx.write_bytes(make_docx(texts[2].split("\n\n")))
    files.append(docx)

    driver = chrome(downloads=downloads)
    try:
        driver.get(live_server + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: "Held-out F1" in d.find_element(By.ID, "legend").text)
        legend = driver.find_element(By.ID, "legend").text
        assert "Rebuttal: the writer's answer to a counterclaim" in legend
        assert "this computer" in driver.find_element(By.ID, "privacy").text

        # A class set from three files (two .txt, one .docx through /api/docx).
        driver.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in files))
        wait.until(lambda d: "3 essays ready" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")) == 3)
        rows = driver.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")
        names = [r.find_element(By.CSS_SELECTOR, "button.open-essay").text for r in rows]
        assert names == ["student1.txt", "student2.txt", "student3.docx"]
        header = driver.find_element(By.CSS_SELECTOR, "#set-table thead").text
        for column in ("Rebuttal", "Not found", "Unsure"):
            assert column in header

        # Click a row: that essay, marked, with its summary.
        rows[1].find_elements(By.TAG_NAME, "td")[3].click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "essay-title"), "student2.txt"))
        marks = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")
        assert marks and {m.get_attribute("data-type") for m in marks} <= set(CLASSES)
        view = driver.find_element(By.ID, "essay-view")
        assert (
            "".join(
                s.get_attribute("textContent") or ""
                for s in view.find_elements(By.CSS_SELECTOR, "[data-at]")
            )
            == texts[1]
        )  # the essay, whole
        summary = driver.find_element(By.ID, "summary").text
        assert "types present" in summary

        # Keyboard: Tab from the table reaches an element, whose type and confidence show.
        last = driver.find_elements(By.CSS_SELECTOR, "button.open-essay")[-1]
        driver.execute_script("arguments[0].focus();", last)
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused = driver.switch_to.active_element
        assert focused.tag_name == "mark" and "element" in (focused.get_attribute("class") or "")
        tip = focused.find_element(By.CSS_SELECTOR, ".tip")
        assert tip.is_displayed() and "confidence" in tip.text
        assert focused.get_attribute("data-type") in tip.text
        # Enter opens the editor (as a tap does).
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        editor = driver.find_element(By.ID, "editor")
        wait.until(lambda d: editor.is_displayed())
        assert "confidence" in driver.find_element(By.ID, "editor-info").text

        violations = run_axe(driver)  # class set, essay and editor on screen
        assert not violations, _describe(violations)

        # Correct: change the type, remove one, mark a passage.
        old = focused.get_attribute("data-type")
        new = "Rebuttal" if old != "Rebuttal" else "Lead"
        Select(driver.find_element(By.ID, "editor-type")).select_by_value(new)
        driver.find_element(By.ID, "editor-apply").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "essay-title"), "(corrected)"))
        changed = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.changed")
        assert [m.get_attribute("data-type") for m in changed] == [new]
        n_before = len(driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element"))
        last_mark = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")[-1]
        assert "changed" not in (last_mark.get_attribute("class") or "")
        driver.execute_script("arguments[0].click();", last_mark)  # a tap
        wait.until(lambda d: editor.is_displayed())
        info = driver.find_element(By.ID, "editor-info").text
        assert (
            "confidence" in info and last_mark.find_element(By.CSS_SELECTOR, ".tip").is_displayed()
        )
        start = int(info.split("words ")[1].split("–")[0])
        driver.find_element(By.ID, "editor-remove").click()
        wait.until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")) == n_before - 1
            )
        )
        # Mark a passage where the removed element began (overlapping nothing now).
        driver.find_element(By.ID, "add-from").send_keys(str(start))
        driver.find_element(By.ID, "add-to").send_keys(str(start + 2))
        Select(driver.find_element(By.ID, "add-type")).select_by_value("Lead")
        driver.find_element(By.ID, "add-go").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"Marked words {start}–"))
        added = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")[-1]
        assert added.get_attribute("data-type") == "Lead"
        three = " ".join(texts[1].split()[start - 1 : start + 2])
        assert three in (added.get_attribute("textContent") or "")
        assert "marked by you" in (added.get_attribute("title") or "")
        row = driver.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")[1]
        assert row.find_elements(By.TAG_NAME, "td")[-1].text == "yes"

        # Downloads: the table, the model's labels, the corrected labels.
        driver.find_element(By.ID, "dl-csv").click()
        table = list(csv.reader(io.StringIO(_wait_file(downloads, ".csv").read_text("utf-8-sig"))))
        assert table[0][:2] == ["essay", "words"] and len(table) == 4
        assert [r[0] for r in table[1:]] == names and table[2][-1] == "yes"
        driver.find_element(By.ID, "dl-jsonl").click()
        plain = [
            json.loads(x) for x in _wait_file(downloads, ".labels.jsonl").read_text().splitlines()
        ]
        driver.find_element(By.ID, "dl-corrected").click()
        fixed = [
            json.loads(x)
            for x in _wait_file(downloads, ".corrected.jsonl").read_text().splitlines()
        ]
        assert [x["schema_version"] for x in plain + fixed] == [SCHEMA_VERSION] * 6
        assert [x["corrected"] for x in plain] == [False] * 3
        assert [x["corrected"] for x in fixed] == [False, True, False]
        assert fixed[0]["elements"] == plain[0]["elements"]
        kinds = [e.get("changed") for e in fixed[1]["elements"]]
        assert kinds.count("added") == 1 and kinds.count("type") == 1
        for e in fixed[1]["elements"]:
            assert texts[1][e["char_start"] : e["char_end"]] == e["text"]

        # The print view: every element framed and tagged, for paper.
        driver.find_element(By.ID, "print-view").click()
        area = driver.find_element(By.ID, "print-area")
        wait.until(lambda d: area.is_displayed())
        assert not driver.find_element(By.ID, "input").is_displayed()
        assert len(area.find_elements(By.CSS_SELECTOR, "article.printed")) == 3
        printed = area.find_elements(By.CSS_SELECTOR, "mark.element")
        assert printed
        for mark in printed[:20]:
            assert mark.value_of_css_property("border-top-width") == "2px"
            assert mark.value_of_css_property("border-top-style") in ("solid", "dashed")
            assert mark.find_element(By.CSS_SELECTOR, ".tag").text.split(" ")[0].title() in {
                c.split()[0].title() for c in CLASSES
            }
        violations = run_axe(driver)
        assert not violations, _describe(violations)
        driver.find_element(By.ID, "print-back").click()
        wait.until(lambda d: d.find_element(By.ID, "input").is_displayed())
        # Printing the page itself (Ctrl-P) frames the elements too.
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        mark = driver.find_element(By.CSS_SELECTOR, "#essay-view mark.element")
        assert mark.value_of_css_property("border-top-width") == "2px"
        assert not driver.find_element(By.ID, "add-box").is_displayed()
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

        # Save on the server, reload the page, reopen, delete.
        name = driver.find_element(By.ID, "set-name")
        name.clear()
        name.send_keys("Period 3")
        driver.find_element(By.ID, "save").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "saved"), "Period 3"))
        driver.get(live_server + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "saved"), "Period 3"))
        driver.find_element(By.CSS_SELECTOR, "#saved button.open-set").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")) == 3)
        rows = driver.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[-1].text for r in rows] == ["", "yes", ""]
        delete = driver.find_element(By.CSS_SELECTOR, "#saved button.delete-set")
        delete.click()
        assert delete.text == "Really delete?"
        delete.click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#saved li"))
    finally:
        driver.quit()


def test_pasted_essays_and_a_failed_info_read_as_messages(live_server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome()
    try:
        # /api/info unreachable: the page says so in words and labelling still works.
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "const f = window.fetch; window.fetch = (u, o) => String(u)"
                ".endsWith('/api/info') ? Promise.reject(new TypeError('Failed to fetch')) "
                ": f(u, o);"
            },
        )
        driver.get(live_server + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: "Could not reach the server" in d.find_element(By.ID, "status").text)
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "TypeError" not in page
        essays = _essays()[:2]
        box = driver.find_element(By.ID, "essay")
        driver.execute_script(
            "arguments[0].value = arguments[1];", box, essays[0] + "\n===\n" + essays[1]
        )
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")) == 2)
        assert driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")
        assert "TypeError" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def test_page_asks_for_the_token_on_a_shared_server(labeller: Labeller) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from discourse_rl.app.security import Access

    access = Access.for_bind("0.0.0.0", allow_remote=True)
    options = ServeOptions(access=access, address="http://school:8000")
    server = _serve(create_app(labeller, options))
    url = next(server)
    driver = chrome()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        box = driver.find_element(By.ID, "token-box")
        wait.until(lambda d: box.is_displayed())
        assert "token" in driver.find_element(By.ID, "status").text
        driver.get(url + "/?again#token=" + (access.token or ""))
        wait.until(lambda d: "network" in d.find_element(By.ID, "privacy").text)
        assert "#token" not in driver.current_url  # not left in the address bar
        assert not driver.find_element(By.ID, "token-box").is_displayed()
    finally:
        driver.quit()
        next(server, None)
