"""The README's screenshots of the labelling page: a class set, and one essay marked.

python tools/serve_screenshot.py --out-dir docs        # the shipped model; --model RUN for another

Serves the run on a free port of 127.0.0.1 (in this process), opens the sample's test essays as
files, presses Label, then writes OUT_DIR/serve-class-set.png (the table) and OUT_DIR/serve.png
(one essay: its summary and the essay with an element's confidence tip showing).
Needs Debian's chromium and chromium-driver and the selenium package (as the page's test does).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from discourse_rl import Labeller
from discourse_rl.app.serve import create_app
from discourse_rl.core.data import sample_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--stage", default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("docs"))
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(Labeller.load(args.model, args.stage))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={args.width},1000")
    driver = webdriver.Chrome(
        service=Service(executable_path=shutil.which("chromedriver") or "chromedriver"),
        options=options,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 300)
        wait.until(lambda d: "Held-out F1" in d.find_element(By.ID, "legend").text)
        essays = sorted((sample_dir() / "test").glob("*.txt"))
        driver.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in essays))
        wait.until(lambda d: "ready" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "go").click()
        n = len(essays)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#set-table tbody tr")) == n)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, int(height) + 200)
        out = args.out_dir / "serve-class-set.png"
        driver.find_element(By.ID, "classset").screenshot(str(out))
        print(f"wrote {out}")

        rows = driver.find_elements(By.CSS_SELECTOR, "#set-table tbody tr button.open-essay")
        rows[min(1, len(rows) - 1)].click()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, int(height) + 200)
        marks = driver.find_elements(By.CSS_SELECTOR, "#essay-view mark.element")[1:8]
        if marks:  # the one nearest the left edge, so that its tip fits on the page
            mark = min(marks, key=lambda m: m.rect["x"])
            driver.execute_script("arguments[0].focus();", mark)  # its tip shows
        full = args.out_dir / "serve-full.tmp.png"
        driver.save_screenshot(str(full))
        top = driver.find_element(By.ID, "summary").rect["y"] - 10
        bottom = driver.find_element(By.ID, "essay-view").rect
        ratio = driver.execute_script("return window.devicePixelRatio") or 1
        with Image.open(full) as img:
            end = bottom["y"] + bottom["height"] + 10
            box = (0, int(top * ratio), img.width, int(end * ratio))
            out = args.out_dir / "serve.png"
            img.crop(box).save(out)
        full.unlink()
        print(f"wrote {out}")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
