"""The review page in a real browser: `agentfs serve` (hypercorn under trio) in
a subprocess, Debian's headless chromium driven by Selenium through
chromedriver (nothing downloaded at test time).

A reviewer opens the review queue, reads the agent's rendered Markdown report,
approves it, then rolls the workspace back to a checkpoint behind the
confirmation page; the file's content must be the checkpoint's afterwards.
Last, the file's page left open must show an agent's next write by itself.
``AGENTFS_WEB_SCREENSHOT=FILE`` saves the file page's screenshot there (the
one in docs/ was taken this way).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

import agentfs
from tests.helpers.web import NEW, OLD, prepare

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,900"]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(store URL, page URL) of `agentfs serve` on a free loopback port; stopped by its PID."""
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    url = f"file://{tmp_path}/store"
    prepare(url)
    proc = subprocess.Popen([sys.executable, "-m", "agentfs", "serve", url, "--listen", "127.0.0.1:0",
                             "--agent", "alice"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, b"")], daemon=True)
    reader.start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while not seen or b"review page at" not in seen[-1]:
            try:
                seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"agentfs serve did not start: {seen!r}") from None
        m = re.search(rb"(http://127\.0\.0\.1:\d+)/", seen[-1])
        assert m, seen
        yield url, m.group(1).decode()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        reader.join(timeout=5)
        while not lines.empty():
            seen.append(lines.get())
        out = b"".join(seen).decode(errors="replace")
        proc.stdout.close()
        assert rc == 0, out
        assert "Traceback" not in out and "ERROR" not in out, out


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def test_review_approve_and_roll_back_in_chromium(server: tuple[str, str], browser: WebDriver) -> None:
    store_url, base = server
    b = browser
    b.get(f"{base}/w/ws/review")
    b.find_element(By.CSS_SELECTOR, "#queue a[href='/w/ws/files/report.md']").click()
    # the agent's Markdown, rendered
    assert b.find_element(By.CSS_SELECTOR, "article.markdown h1").text == "Q4 report"
    assert "Revenue grew 40%." in b.find_element(By.ID, "preview").text
    if shot := os.environ.get("AGENTFS_WEB_SCREENSHOT"):
        b.save_screenshot(shot)
    b.find_element(By.NAME, "note").send_keys("looks right")
    b.find_element(By.ID, "approve").click()
    assert "Recorded: approve by alice" in b.find_element(By.ID, "done").text
    assert b.find_element(By.CSS_SELECTOR, ".meta .badge").text == "approved"
    with agentfs.open_workspace(store_url, "ws", create=False) as c:
        st = c.state("report.md")
        assert st is not None and st.status == "approved" and st.updated_by == "alice"
        assert c.read_bytes("report.md") == NEW

    # roll back to v1: the link, the confirmation, the button
    b.find_element(By.LINK_TEXT, "Checkpoints").click()
    row = b.find_element(By.XPATH, "//table[@id='checkpoints']//tr[td[1]/a[text()='v1']]")
    row.find_element(By.CLASS_NAME, "rollback").click()
    assert "Roll back ws to v1?" in b.find_element(By.TAG_NAME, "h1").text
    b.find_element(By.ID, "confirm-rollback").click()
    assert "Rolled back to v1" in b.find_element(By.ID, "restored").text
    with agentfs.open_workspace(store_url, "ws", create=False) as c:
        assert c.read_bytes("report.md") == OLD
    b.get(f"{base}/w/ws/files/report.md")
    assert "Revenue grew 4%." in b.find_element(By.ID, "preview").text

    # the page left open follows the journal: an agent's write shows without a click
    marker = b.find_element(By.ID, "preview")
    with agentfs.open_workspace(store_url, "ws", agent="writer", create=False) as c:
        c.write_bytes("report.md", b"# Q4 report\n\nRevenue grew 5%.\n")
    WebDriverWait(b, 10).until(lambda d: "Revenue grew 5%." in d.find_element(By.ID, "preview").text)
    assert marker.id != b.find_element(By.ID, "preview").id  # a new page, not the old one
