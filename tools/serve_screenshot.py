"""The README's screenshot of the labelling page: serve a run, paste an essay, press Label.

python tools/serve_screenshot.py --model runs/demo --out docs/serve.png

Needs Debian's chromium and chromium-driver and the selenium package (as the page's test does).
The server runs in this process on a free port of 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from discourse_rl import Labeller
from discourse_rl.app.serve import create_app
from discourse_rl.core.data import read_essay, sample_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo"))
    ap.add_argument("--stage", default=None)
    ap.add_argument("--essay", type=Path, default=sample_dir() / "test" / "D46BCB48440A.txt")
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    ap.add_argument("--width", type=int, default=1100)
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
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#legend li")))
        box = driver.find_element(By.ID, "essay")
        driver.execute_script(
            "arguments[0].value = arguments[1];", box, read_essay(args.essay).text
        )
        driver.find_element(By.ID, "go").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, int(height) + 40)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
