"""The review page in a real browser: two doctors label at the same time in headless Chromium, the server is
killed in the middle and restarted, nothing shown as saved is lost, untrusted text stays text, and the export
holds what they chose. Skipped only where Chromium and its driver cannot be found (scripts/setup.sh installs
them as root)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from rlmed.artifacts import read_jsonl
from rlmed.cli import main
from rlmed.review.browser import find_chromium, quit_chromium, start_chromium
from tests.review.conftest import SCRIPT, ReviewServer

WAIT = 15  # seconds a page may take to react; the page retries a failed save every 1.5 s
# Elements an answer, note or correction would create if the page ever parsed it as HTML.
MARKUP_IN_MAIN = "return document.querySelectorAll('main b, main img, main script').length"


@pytest.fixture
def chromium():
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    started = []

    def launch(width: int = 1280, height: int = 900):
        chrome = start_chromium(*found, width=width, height=height)
        started.append(chrome)
        return chrome

    yield launch
    for chrome in started:
        quit_chromium(chrome)


def state(chrome) -> dict:
    return chrome.execute_script(
        "const s = document.getElementById('status');"
        "return {task: document.body.dataset.task || null, status: s.dataset.state, count:"
        " document.getElementById('count').textContent, a: document.getElementById('text-A').textContent,"
        " b: document.getElementById('text-B').textContent, pwned: window.__pwned || null,"
        " banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent};")


def wait_for(chrome, condition, what: str) -> dict:
    """The page's state once `condition(state)` holds."""
    def check(c):
        now = state(c)
        return now if condition(now) else None

    return WebDriverWait(chrome, WAIT, poll_frequency=0.05).until(check, message=what)


def press(chrome, key: str) -> None:
    ActionChains(chrome).send_keys(key).perform()


def careful_key(now: dict) -> str:
    if SCRIPT in (now["a"], now["b"]):
        return "4"  # both unsafe
    return "1" if "就医" in now["a"] else "2"


def label_current(chrome, key: str | None = None) -> str:
    """Label the task on screen with the keyboard; wait until the page says saved and moved on (or finished)."""
    before = wait_for(chrome, lambda s: s["task"] and s["a"], "a task on screen")
    press(chrome, key or careful_key(before))
    wait_for(chrome, lambda s: s["task"] != before["task"] or s["banner"], "saved and moved on")
    return before["task"]


def open_page(chrome, server: ReviewServer, who: str) -> dict:
    chrome.get(f"{server.base}/?token={server.tokens[who]}")
    assert "token=" not in chrome.current_url  # the redirect took the token out of the address bar
    return wait_for(chrome, lambda s: s["task"] and s["a"], "the first task")


def queue_of(server: ReviewServer, who: str) -> list[dict]:
    return server.client(who).get("/api/me").json()["tasks"]


def test_two_doctors_label_in_chromium_through_a_server_restart(run_dir, chromium, capsys):
    server = ReviewServer(run_dir, "--annotators", "alice,bob", "--overlap", "0.5").start()
    alice, bob = chromium(), chromium(768, 1024)  # a laptop and a tablet held upright
    try:
        open_page(alice, server, "alice")
        open_page(bob, server, "bob")
        assert alice.find_element(By.ID, "who").text == "alice" and bob.find_element(By.ID, "who").text == "bob"
        for chrome in (alice, bob):  # blind: no model name, stage or sample id anywhere on the page
            assert not any(name in chrome.page_source for name in ("ppo", "sft", "sample0", "feedback:"))
        # The page's layout follows the width: answers side by side on the laptop, stacked on the tablet.
        for chrome, side_by_side in ((alice, True), (bob, False)):
            a, b = (chrome.find_element(By.ID, f"answer-{s}").rect for s in "AB")
            assert (a["y"] == b["y"] and b["x"] > a["x"]) if side_by_side else (b["y"] >= a["y"] + a["height"])

        # Both label at the same time, each in their own browser.
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(lambda c: [label_current(c) for _ in range(2)], (alice, bob)))
        assert [len(set(d)) for d in done] == [2, 2]

        # The server dies. A label given now is not shown as saved, and no progress is counted.
        server.kill()
        before = state(alice)
        press(alice, careful_key(before))
        offline = wait_for(alice, lambda s: s["status"] == "offline", "the page noticing the server is gone")
        assert offline["task"] == before["task"] and offline["count"] == before["count"]
        assert before["count"].startswith("2 / ")
        restarted = ReviewServer(run_dir, port=server.port).start()  # same port; the stored review, no new links
        restarted.tokens = server.tokens
        # The page retries on its own; once the label is committed it says so and moves on.
        wait_for(alice, lambda s: s["task"] != before["task"], "the retried save")
        assert state(alice)["count"].startswith("3 / ")
        alice_queue = queue_of(restarted, "alice")
        assert [t["done"] for t in alice_queue][:3] == [True] * 3

        # Bob reloads after the restart: his cookie still works and the page resumes at his first open task.
        bob.refresh()
        resumed = wait_for(bob, lambda s: s["task"] and s["a"], "bob's page after the restart")
        bob_queue = queue_of(restarted, "bob")
        assert resumed["task"] == next(t["id"] for t in bob_queue if not t["done"])

        # Skip and come back: bob skips his current task, labels the rest, and the page brings him back to it.
        skipped = resumed["task"]
        press(bob, "s")
        wait_for(bob, lambda s: s["task"] != skipped, "the skip")
        with ThreadPoolExecutor(2) as pool:
            _, bob_labelled = pool.map(label_rest, (alice, bob))
        assert bob_labelled[-1] == skipped and bob_labelled.count(skipped) == 1  # last, once the rest were done
        assert all(t["done"] for who in ("alice", "bob") for t in queue_of(restarted, who))

        # Untrusted text: the <script> answer is on screen as characters, nothing in it ran, no tag was made.
        hostile = [c for c in (alice, bob) if show_task_with(c, SCRIPT)]
        assert hostile
        for chrome in hostile:
            now = state(chrome)
            assert SCRIPT in (now["a"], now["b"]) and now["pwned"] is None
            assert chrome.execute_script(MARKUP_IN_MAIN) == 0
            # A doctor's note and correction holding markup are saved and shown back as text too.
            chrome.find_element(By.ID, "note").send_keys("<b>注意</b><img src=x onerror=\"window.__pwned=3\">")
            chrome.find_element(By.ID, "corrected").send_keys("请立即就医。<script>window.__pwned=4</script>")
            click(chrome, chrome.find_element(By.CSS_SELECTOR, "#answer-A details.scores summary"))
            Select(chrome.find_elements(By.CSS_SELECTOR, "select[data-side='A']")[0]).select_by_value("2")
            click(chrome, chrome.find_element(By.ID, "save"))
            wait_for(chrome, lambda s: s["status"] == "saved", "the note saved")
            chrome.refresh()
            wait_for(chrome, lambda s: s["a"], "the page again")
            show_task_with(chrome, SCRIPT)
            assert chrome.find_element(By.ID, "note").get_property("value").startswith("<b>注意</b>")
            assert state(chrome)["pwned"] is None
            assert chrome.execute_script(MARKUP_IN_MAIN) == 0
        restarted.kill()
    finally:
        server.kill()

    # Every label the browsers were shown as saved is in the export, de-blinded to what each doctor chose.
    assert main(["review", "export", str(run_dir)]) == 0
    labels = read_jsonl(run_dir / "review" / "export" / "labels.jsonl")
    total = len(alice_queue) + len(bob_queue)
    assert len(labels) == total  # every task of both queues, the skipped one included
    assert all(r["verdict"] == ("unsafe" if r["item"] == "dialogues:5" else "second" if r["source"] == "evaluate"
                                else "first") for r in labels), labels  # careful = ppo (second) / AI's chosen
    corrected = [r for r in labels if r["corrected"]]
    assert corrected and all(r["corrected"].endswith("<script>window.__pwned=4</script>") for r in corrected)
    assert all(r["scores"] == {r["shown_as_a"]: {"informativeness": 2}} for r in corrected)
    pairs = read_jsonl(run_dir / "review" / "export" / "pairs.jsonl")
    assert len(pairs) == 8 and all("就医" in p["chosen"] for p in pairs)  # 9 tasks less the both-unsafe one
    doctors = json.loads((run_dir / "review" / "export" / "doctors.json").read_text())
    assert doctors["inter_annotator"]["tasks"] == 4 and doctors["inter_annotator"]["agreement"] == 1.0
    assert "8 pairs" in capsys.readouterr().out


def label_rest(chrome) -> list[str]:
    labelled = []
    while not state(chrome)["banner"]:
        labelled.append(label_current(chrome))
    return labelled


def show_task_with(chrome, text: str) -> bool:
    """Move with the arrow key until an answer holding `text` is on screen; False when no task of the queue has it."""
    total = int(state(chrome)["count"].split(" / ")[1])
    for _ in range(total):
        now = wait_for(chrome, lambda s: s["a"], "a task")
        if text in (now["a"], now["b"]):
            return True
        press(chrome, Keys.ARROW_RIGHT)
        if total > 1:
            wait_for(chrome, lambda s: s["task"] != now["task"], "the next task")
    return False


def click(chrome, element) -> None:
    """Centre first: on the tablet width the fixed verdict bar may cover an element scrolled to the bottom."""
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()
