"""rlmed review over plain HTTP against a real server process: tokens, isolation, escaping, limits, restarts,
the overlap share, and the export's rows as the training stages read them."""

from __future__ import annotations

import json
import re
import stat

import httpx
import pytest

from rlmed.artifacts import read_jsonl
from rlmed.cli import main
from rlmed.review.report import doctors_markdown, run_section
from rlmed.review.server import STATIC
from rlmed.review.store import ReviewStore, db_path
from rlmed.review.tasks import assign, build_tasks, view
from tests.review.conftest import EVAL_ROWS, FEEDBACK_PROMPTS, SCRIPT, careful, make_run


def own_tasks(client: httpx.Client) -> list[str]:
    return [t["id"] for t in client.get("/api/me").json()["tasks"]]


def careful_side(task: dict) -> str:
    """The side showing the careful answer (it always sends a child with danger signs to a doctor)."""
    sides = [s for s in ("A", "B") if "就医" in task["answers"][s]]
    assert len(sides) == 1, task["answers"]
    return sides[0]


def test_tasks_pair_the_runs_answers_blind_with_sides_drawn_per_task(run_dir):
    tasks, summary = build_tasks(run_dir, seed=3)
    # 6 generation rows of sft vs ppo, less the one both answered alike (choice rows, the rank shards and the
    # crashed evaluate folder without a manifest give none); one task per ai_feedback prompt.
    assert summary["eval"] == {"tasks": EVAL_ROWS - 1, "same_answers": 1, "empty_answers": 0}
    assert "eval_crashed" not in summary
    assert [t.source for t in tasks].count("ai_feedback") == FEEDBACK_PROMPTS
    for t in (t for t in tasks if t.source == "ai_feedback"):  # the AI's own pair: chosen first, rejected second
        assert [a["score"] for a in t.answers] == [0.8, 0.2] and t.extra["ai_pair"] is True
    swaps = [t.swapped for t in tasks]
    assert swaps == [t.swapped for t in build_tasks(run_dir, seed=3)[0]]  # recorded draws are reproducible
    assert len(set(swaps)) == 2  # both sides occur (9 tasks)
    assert swaps != [t.swapped for t in build_tasks(run_dir, seed=4)[0]]
    # A task's side depends on the seed and its id only: building from a smaller run draws the same sides.
    only_feedback = {t.id: t.swapped for t in build_tasks(run_dir, seed=3, sources=["ai_feedback"])[0]}
    assert only_feedback == {t.id: t.swapped for t in tasks if t.source == "ai_feedback"}
    shown = json.dumps([view(t, []) for t in tasks], ensure_ascii=False)
    assert '"sft"' not in shown and '"ppo"' not in shown and "sample0" not in shown and "0.9" not in shown


def test_overlap_gives_the_exact_share_to_two_annotators_first_in_their_queues():
    ids = [f"t{i}" for i in range(40)]
    queues = assign(ids, ["alice", "bob", "carol"], overlap=0.25, seed=0)
    holders = {tid: [a for a, q in queues.items() if tid in q] for tid in ids}
    shared = {tid for tid, who in holders.items() if len(who) == 2}
    assert len(shared) == 10 and all(len(who) in (1, 2) for who in holders.values())
    assert max(map(len, queues.values())) - min(map(len, queues.values())) <= 1  # 50 slots over 3 annotators
    for queue in queues.values():  # the shared tasks lead every queue
        n = sum(tid in shared for tid in queue)
        assert set(queue[:n]) <= shared
    pairs = {tuple(sorted(who)) for who in holders.values() if len(who) == 2}
    assert len(pairs) == 3  # every pair of annotators shares some tasks
    assert assign(ids, ["alice", "bob"], 0.0, 0) == assign(ids, ["alice", "bob"], 0.0, 0)


def test_requests_without_a_valid_token_get_401(review_server):
    server = review_server("--annotators", "alice,bob")
    tid = own_tasks(server.client("alice"))[0]
    anonymous = httpx.Client(base_url=server.base)
    wrong = httpx.Client(base_url=server.base, headers={"Authorization": "Bearer " + "x" * 32},
                         cookies={"rlmed_review": "y" * 32})
    for client in (anonymous, wrong):
        assert client.get("/").status_code == 401
        assert client.get("/static/review.js").status_code == 401
        assert client.get("/api/me").status_code == 401
        assert client.get(f"/api/tasks/{tid}").status_code == 401
        assert client.put(f"/api/tasks/{tid}/label", json={"verdict": "a"}).status_code == 401
    assert anonymous.get("/?token=not-a-token").status_code == 401
    # A valid link sets an HttpOnly cookie and drops the token from the address; the cookie then works alone.
    first = anonymous.get(f"/?token={server.tokens['bob']}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=strict" in first.headers["set-cookie"]
    browser = httpx.Client(base_url=server.base, cookies={"rlmed_review": server.tokens["bob"]})
    assert browser.get("/api/me").json()["annotator"] == "bob"
    assert "<script src=\"/static/review.js\"" in browser.get("/").text
    assert "token=" not in "".join(server.output[server.output.index(next(
        line for line in server.output if line.startswith("serving on"))):])  # no access log with tokens


def test_an_annotator_sees_and_changes_only_their_own_labels(review_server):
    server = review_server("--annotators", "alice,bob", "--overlap", "0.5")
    alice, bob = server.client("alice"), server.client("bob")
    mine, theirs = set(own_tasks(alice)), set(own_tasks(bob))
    shared, alice_only = mine & theirs, sorted(mine - theirs)
    assert len(shared) == 4 and alice_only  # round(0.5 × 9) tasks shared
    target = alice_only[0]
    assert alice.put(f"/api/tasks/{target}/label", json={"verdict": "a", "note": "alice's"}).status_code == 200
    assert bob.get(f"/api/tasks/{target}").status_code == 404
    assert bob.put(f"/api/tasks/{target}/label", json={"verdict": "b", "note": "bob's"}).status_code == 404
    assert alice.get(f"/api/tasks/{target}").json()["label"]["note"] == "alice's"
    both = sorted(shared)[0]
    alice.put(f"/api/tasks/{both}/label", json={"verdict": "a", "note": "from alice"})
    bob.put(f"/api/tasks/{both}/label", json={"verdict": "tie", "note": "from bob"})
    assert alice.get(f"/api/tasks/{both}").json()["label"]["note"] == "from alice"
    assert bob.get(f"/api/tasks/{both}").json()["label"] == {"verdict": "tie", "scores": None, "corrected": None,
                                                              "note": "from bob", "revision": 1}
    # Changing one's own label replaces it (one row per annotator and task) and counts the revision.
    again = alice.put(f"/api/tasks/{both}/label", json={"verdict": "b"}).json()
    assert again["label"]["revision"] == 2 and again["label"]["note"] is None
    assert {m["annotator"]: m["labelled"] for m in (alice.get("/api/me").json(), bob.get("/api/me").json())} == \
        {"alice": 2, "bob": 1}


def test_untrusted_text_is_returned_as_data_and_the_page_never_parses_it(review_server):
    server = review_server("--annotators", "alice")
    alice = server.client("alice")
    tasks = [alice.get(f"/api/tasks/{tid}").json() for tid in own_tasks(alice)]
    hostile = [t for t in tasks if SCRIPT in t["answers"].values()]
    assert len(hostile) == 1  # the exact text, in a JSON string: the page puts it in with textContent
    note = "</textarea><script>alert(1)</script>"
    saved = alice.put(f"/api/tasks/{hostile[0]['id']}/label", json={"verdict": "unsafe", "note": note,
                                                                     "corrected": SCRIPT}).json()["label"]
    assert saved["note"] == note and saved["corrected"] == SCRIPT
    page = alice.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script could run
    assert page.headers["x-content-type-options"] == "nosniff"
    script = alice.get("/static/review.js").text
    assert "textContent" in script
    # No API that parses a string as HTML is used anywhere on the page (the browser test renders it too).
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)


def test_request_limits_and_origin_checks(review_server):
    server = review_server("--annotators", "alice")
    alice = server.client("alice")
    tid = own_tasks(alice)[0]
    huge = json.dumps({"verdict": "a", "note": "长" * 40_000}).encode()  # 120 KB of UTF-8 > the 64 KiB cap
    assert alice.put(f"/api/tasks/{tid}/label", content=huge,
                     headers={"content-type": "application/json"}).status_code == 413
    too_long = alice.put(f"/api/tasks/{tid}/label", json={"verdict": "a", "note": "x" * 5000})
    assert too_long.status_code == 422 and "note" in too_long.json()["error"]
    for bad in ({"verdict": "A"}, {"verdict": "a", "scores": {"A": {"coherence": 11}}},
                {"verdict": "a", "scores": {"A": {"bedside_manner": 5}}}, {"verdict": "a", "extra": 1}, []):
        assert alice.put(f"/api/tasks/{tid}/label", json=bad).status_code == 422, bad
    form = alice.put(f"/api/tasks/{tid}/label", content=b"verdict=a",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    cross = alice.put(f"/api/tasks/{tid}/label", json={"verdict": "a"}, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403
    assert alice.get(f"/api/tasks/{tid}").json()["label"] is None  # none of them wrote anything
    # Only the page's own files are served: no path reaches the package folder or the run folder.
    for path in ("/static/page.html", "/static/../store.py", "/static/%2e%2e%2fstore.py", "/static/review.py",
                 "/review/review.sqlite", "/run/review/review.sqlite", "/static/", "/static/review.js/x"):
        assert alice.get(path).status_code in (404, 405), path
    assert sorted(p.name for p in STATIC.iterdir()) == ["page.html", "review.css", "review.js"]


def test_labels_survive_a_killed_server_and_links_keep_working(review_server, run_dir):
    server = review_server("--annotators", "alice,bob", "--overlap", "0.5")
    alice = server.client("alice")
    queue = own_tasks(alice)
    for tid in queue[:3]:
        assert alice.put(f"/api/tasks/{tid}/label", json={"verdict": "b", "note": tid}).status_code == 200
    server.kill()  # SIGKILL: no shutdown hook, no checkpoint; the WAL commit is all there is
    again = review_server()  # no --annotators: the review as it was
    again.tokens = dict(server.tokens)
    assert any("the link issued before still works" in line for line in again.output)
    alice = again.client("alice")
    me = alice.get("/api/me").json()
    assert [t["id"] for t in me["tasks"]] == queue and me["labelled"] == 3
    assert [t["done"] for t in me["tasks"]][:4] == [True, True, True, False]  # the page resumes at the 4th
    assert [alice.get(f"/api/tasks/{tid}").json()["label"]["note"] for tid in queue[:3]] == queue[:3]
    assert again.client("bob").get("/api/me").status_code == 200
    again.kill()
    # --new-tokens replaces a link: the old one stops working, the new one works.
    rotated = review_server("--new-tokens", "bob")
    rotated.tokens = {"alice": server.tokens["alice"], "old": server.tokens["bob"], **rotated.tokens}
    assert rotated.tokens["bob"] != server.tokens["bob"]
    assert rotated.client("old").get("/api/me").status_code == 401
    assert rotated.client("bob").get("/api/me").json()["annotator"] == "bob"
    assert rotated.client("alice").get("/api/me").json()["labelled"] == 3
    mode = stat.S_IMODE(db_path(run_dir).stat().st_mode)
    assert mode == 0o600 and stat.S_IMODE(db_path(run_dir).parent.stat().st_mode) == 0o700
    store = ReviewStore(db_path(run_dir))
    assert all(len(row[0]) == 64 for row in store._conn.execute("SELECT token_sha256 FROM annotators"))
    assert server.tokens["alice"] not in db_path(run_dir).read_bytes().decode("latin-1")  # only hashes stored
    store.close()


def test_a_restart_refuses_other_annotators_and_a_run_without_tasks(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    store = ReviewStore(db_path(run))
    tasks, _ = build_tasks(run)
    store.setup(tasks, assign([t.id for t in tasks], ["alice", "bob"], 0.0, 0), {"seed": 0})
    store.close()
    assert main(["review", str(run), "--annotators", "alice,carol", "--port", "1"]) == 2
    assert "started for alice, bob" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["review", str(empty), "--annotators", "alice"]) == 2
    assert "nothing to review" in capsys.readouterr().err
    assert main(["review", "export", str(tmp_path / "nowhere")]) == 2


def label_all(server, who: str, verdict_of) -> None:
    client = server.client(who)
    for tid in own_tasks(client):
        task = client.get(f"/api/tasks/{tid}").json()
        body = verdict_of(task)
        if body is not None:
            assert client.put(f"/api/tasks/{tid}/label", json=body).status_code == 200


def test_export_writes_deblinded_rows_the_stages_read(review_server, run_dir, capsys):
    from rlmed.data.sources import DataSource, load_sources, pair
    from rlmed.eval.judge_check import read_labels

    server = review_server("--annotators", "alice,bob", "--overlap", "1.0")  # every task labelled twice
    hostile_id = None

    def alice(task):  # the careful answer, always; a corrected answer on the first task
        nonlocal hostile_id
        if SCRIPT in task["answers"].values():
            hostile_id = task["id"]
            return {"verdict": "unsafe"}
        body = {"verdict": careful_side(task).lower(), "scores": {careful_side(task): {"coherence": 9}}}
        if task["prompt"][-1]["content"].startswith("孩子1岁"):
            body["corrected"] = "医生修改后的回答：先测体温，精神差立即就医。"
        return body

    def bob(task):  # agrees, except a tie on the ai_feedback prompt p0's task
        if SCRIPT in task["answers"].values():
            return {"verdict": "unsafe"}
        if task["prompt"][-1]["content"].startswith("孩子11岁"):
            return {"verdict": "tie"}
        return {"verdict": careful_side(task).lower()}

    label_all(server, "alice", alice)
    label_all(server, "bob", bob)
    assert main(["review", "export", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    folder = run_dir / "review" / "export"
    pairs = read_jsonl(folder / "pairs.jsonl")
    # 9 tasks: the <script> one is "both unsafe" (no pair), p0's labels conflict (no pair): 7 pairs.
    assert len(pairs) == 7 and "7 pairs" in printed and "disagree: 1 tasks" in printed
    # De-blinded: the careful answer is chosen whichever side it was shown on (sides were drawn both ways).
    assert all("就医" in p["chosen"] and "就医" not in p["rejected"] for p in pairs)
    assert {p["chosen_model"] for p in pairs} == {"ppo", "feedback:sample0"}
    loaded = load_sources([DataSource(path=str(folder / "pairs.jsonl"))], pair, seed=0, keep_order=True)
    assert len(loaded.items) == 7 and loaded.items[0].prompt[-1]["role"] == "user"
    kto = read_jsonl(folder / "kto.jsonl")
    # 7 agreed pairs → 7 desirable + 7 undesirable; "both unsafe" → 2 undesirable; 1 corrected → 1 desirable.
    assert sum(r["label"] for r in kto) == 8 and sum(not r["label"] for r in kto) == 9
    assert all(r["completion"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in kto)
    unsafe = [r["completion"][0]["content"] for r in kto if r["kind"] == "unsafe"]
    assert SCRIPT in unsafe and [r["task"] for r in kto if r["kind"] == "unsafe"] == [hostile_id] * 2
    sft = read_jsonl(folder / "sft.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == ["医生修改后的回答：先测体温，精神差立即就医。"]
    kind, labels = read_labels(folder / "judge_check.jsonl")
    assert kind == "pairwise" and len(labels) == 2 * 9 - 2  # every a/b/tie label; the two "unsafe" left out
    rows = read_jsonl(folder / "labels.jsonl")
    scored = [r for r in rows if r["scores"]]
    assert scored and all(set(r["scores"]) == {r["winner"]} for r in scored)  # scores follow the model, not the side
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    doctors = json.loads((folder / "doctors.json").read_text())
    (evaluate_pair,) = doctors["win_rates"]
    # sft (the baseline, first) lost every decided eval task; the <script> task is both-unsafe and left out.
    assert (evaluate_pair["model"], evaluate_pair["against"]) == ("sft", "ppo")
    assert evaluate_pair["tasks"] == 4 and evaluate_pair["losses"] == 8 and evaluate_pair["both_unsafe"] == 2
    assert evaluate_pair["win_rate"] == 0.0 and evaluate_pair["high"] == 0.0
    judges = {j["source"]: j for j in doctors["judge_agreement"]}
    # The run's own scores favour the careful answer everywhere: the doctors agree but for bob's one tie.
    assert judges["evaluate"]["accuracy"] == 1.0 and judges["evaluate"]["labels"] == 8
    assert judges["ai_feedback"]["accuracy"] == pytest.approx(7 / 8)
    overlap = doctors["inter_annotator"]
    assert overlap["tasks"] == 9 and overlap["agreement"] == pytest.approx(8 / 9)
    # The report section, read straight from the review database (no export needed), says the same.
    assert run_section(run_dir) == doctors
    page = "\n".join(doctors_markdown(doctors))
    assert page.startswith("## Doctors") and "| eval | sft | ppo | 4 | 0 | 0 | 8 | 2 | 0% | [0%, 0%] |" in page
    assert "| 9 | alice & bob: 9 | 89% |" in page
    # evaluate's report.md takes the same section (rlmed.eval.report._markdown calls doctors_lines).
    from rlmed.eval.report import doctors_lines

    assert doctors_lines(run_dir) == doctors_markdown(doctors)
