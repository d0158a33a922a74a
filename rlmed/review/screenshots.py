"""`python -m rlmed.review.screenshots [--out docs/screenshots]`: the review page at a laptop's and a tablet's
width, for the README. A fictional demo run (no patient data) is reviewed by a real `rlmed review` process and
photographed in headless Chromium (rlmed.review.browser). Not run by the tests: docs change only when asked.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rlmed.review.browser import find_chromium, quit_chromium, start_chromium

WIDTHS = ((1280, 1180), (768, 1500))  # (width, height): a laptop, and a tablet held upright
SYSTEM = "你是一名儿科主治医生。请根据家长的描述给出初步判断和护理建议，并说明需要就医的情况。"
# Fictional consultations written for this picture; no real patient is in them.
DEMO = [
    ("宝宝2岁，昨晚开始发烧，最高39.2℃，吃了布洛芬退了又烧起来，精神还可以，能吃能玩，需要马上去医院吗？",
     "家长您好，2岁孩子发热，精神好、能吃能玩，多为病毒感染，可以先在家观察。体温超过38.5℃可以再用布洛芬或对乙酰"
     "氨基酚，两次之间至少间隔6小时，不要两种药交替使用；多喝水，穿着宽松。如果出现精神差、嗜睡、抽搐、呼吸急促、"
     "皮疹，或发热超过3天，请及时到医院就诊。",
     "发烧很常见，不用担心。可以用酒精擦身体帮助退烧，布洛芬和对乙酰氨基酚交替吃效果更好。多睡觉就好了。",
     "考虑上呼吸道感染可能大。精神好可居家观察，按需退热，注意补液；出现精神萎靡、抽搐、呼吸困难或持续高热超过72小时"
     "需及时就诊。"),
    ("孩子5岁，咳嗽一周了，晚上咳得厉害，不发烧，需要吃什么药？",
     "孩子咳嗽一周、夜间明显、不发热，常见于感冒后咳嗽或过敏。可以睡前抬高枕头，多喝温水，保持室内湿润；不建议自行"
     "使用镇咳药。如果出现气促、喘息、咳嗽超过两周或影响睡眠，请到儿科就诊，必要时听诊和拍片。",
     "多喝水就行，咳嗽会自己好的。",
     "感冒后咳嗽多见，建议观察，避免刺激；如有喘息、气促或持续超过2周应就诊。"),
]


def demo_run(root: Path) -> Path:
    """An evaluate stage's saved answers from two models (the layout rlmed.eval.generations describes)."""
    stage = root / "demo" / "eval"
    (stage / "generations").mkdir(parents=True)
    (stage / "manifest.json").write_text(json.dumps({"id": "eval", "kind": "evaluate"}), encoding="utf-8")
    for model, column in (("sft", 2), ("ppo", 1)):
        rows = [{"set": "dialogues", "index": i, "kind": "generation", "answer": case[column], "reference": case[3],
                 "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": case[0]}]}
                for i, case in enumerate(DEMO)]
        (stage / "generations" / f"{model}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root / "demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _has_cjk_font() -> bool:
    if shutil.which("fc-list") is None:
        return False
    found = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False)
    return bool(found.stdout.strip())


def take(out: Path) -> list[Path]:
    found = find_chromium()
    if isinstance(found, str):
        raise SystemExit(f"rlmed.review.screenshots: {found}")
    if not _has_cjk_font():
        print("warning: no Chinese font installed (e.g. apt-get install fonts-wqy-microhei): the page's Chinese "
              "will show as boxes", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="rlmed-screens-"))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "rlmed.cli", "review", str(demo_run(root)), "--annotators",
                               "王医生", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    written = []
    try:
        token = None
        for line in server.stdout:  # type: ignore[union-attr]
            match = re.search(r"\?token=(\S+)", line)
            token = match.group(1) if match else token
            if line.startswith("serving on"):
                break
        if token is None:
            raise SystemExit("rlmed.review.screenshots: the review server printed no link")
        base = f"http://127.0.0.1:{port}"
        _wait(base)
        out.mkdir(parents=True, exist_ok=True)
        for width, height in WIDTHS:
            chrome = start_chromium(*found, width=width, height=height)
            try:
                chrome.get(f"{base}/?token={token}")
                _until(lambda: chrome.execute_script("return document.getElementById('text-A').textContent"))
                # Show what a doctor sees mid-task: a verdict chosen and saved, the rubric scores open.
                chrome.execute_script("document.getElementById('auto').checked = false;"
                                      "document.querySelectorAll('details.scores').forEach(d => d.open = true);")
                a_text = chrome.execute_script("return document.getElementById('text-A').textContent")
                chrome.find_element("css selector", "body").send_keys("1" if "就诊" in a_text[:120] else "2")
                _until(lambda: chrome.execute_script("return document.getElementById('status').dataset.state")
                       == "saved")
                path = out / f"review-{width}.png"
                chrome.save_screenshot(str(path))
                written.append(path)
            finally:
                quit_chromium(chrome)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)
    return written


def _wait(base: str) -> None:
    def up() -> bool:
        try:
            urllib.request.urlopen(base + "/", timeout=1)
        except urllib.error.HTTPError:
            return True  # 401 without a token: it is serving
        except OSError:
            return False
        return True

    _until(up)


def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit("rlmed.review.screenshots: the page did not get ready in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlmed.review.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    for path in take(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
