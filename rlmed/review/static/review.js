// The review page. Every text that came from a model, a patient or a doctor is put on the page with
// textContent or a form field's value, never parsed as HTML: an answer holding <script> shows as those characters.
// A label is shown as saved only after the server answered that it committed it; until then it waits in
// `pending` and is retried, so a server restarted mid-session loses nothing the doctor was told is saved.
"use strict";
(function () {
  const ROLE_NAMES = {user: "患者/家长", assistant: "医生", system: "系统"};
  const VERDICT_KEYS = {"1": "a", "2": "b", "3": "tie", "4": "unsafe"};
  const RETRY_MS = 1500;
  const state = {
    tasks: [], index: 0, criteria: [], task: null, verdict: null, saved: null,
    pending: new Map(), retrying: false, dirty: false,
  };
  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const options = {method: method, credentials: "same-origin", headers: {}, cache: "no-store"};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);  // a network failure throws TypeError: retried by the caller
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new ApiError((data && data.error) || ("HTTP " + response.status), response.status);
    return data;
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  function banner(text) {
    const node = $("banner");
    node.textContent = text || "";
    node.hidden = !text;
  }

  function showProgress(data) {
    if (data && data.tasks) {
      const done = new Map(data.tasks.map((t) => [t.id, t.done]));
      state.tasks.forEach((t) => { if (done.has(t.id)) t.done = done.get(t.id); });
    }
    const labelled = state.tasks.filter((t) => t.done).length;
    $("count").textContent = labelled + " / " + state.tasks.length;
    $("bar").style.width = (state.tasks.length ? (100 * labelled / state.tasks.length) : 0) + "%";
    $("position").textContent = state.tasks.length ? ("第 " + (state.index + 1) + " 条") : "";
  }

  function renderTurns(prompt) {
    const turns = $("turns");
    clear(turns);
    prompt.forEach((message) => {
      const turn = el("div", "turn role-" + (ROLE_NAMES[message.role] ? message.role : "other"));
      turn.appendChild(el("div", "role", ROLE_NAMES[message.role] || message.role));
      turn.appendChild(el("div", "content", message.content));
      turns.appendChild(turn);
    });
  }

  function renderScores(side, scores) {
    const grid = $("scores-" + side);
    clear(grid);
    state.criteria.forEach((criterion) => {
      const label = el("label", "criterion", criterion.label);
      label.title = criterion.name;
      const select = el("select");
      select.dataset.side = side;
      select.dataset.criterion = criterion.name;
      select.appendChild(el("option", null, "–"));
      select.firstChild.value = "";
      for (let value = 1; value <= 10; value += 1) {
        const option = el("option", null, value);
        option.value = String(value);
        select.appendChild(option);
      }
      const given = scores && scores[side] && scores[side][criterion.name];
      select.value = given ? String(given) : "";
      select.addEventListener("change", markDirty);
      label.appendChild(select);
      grid.appendChild(label);
    });
  }

  function showVerdict(verdict) {
    document.querySelectorAll("button.verdict").forEach((button) => {
      button.classList.toggle("chosen", button.dataset.verdict === verdict);
      button.setAttribute("aria-pressed", button.dataset.verdict === verdict ? "true" : "false");
    });
  }

  function render(task) {
    state.task = task;
    state.verdict = task.label ? task.label.verdict : null;
    state.saved = task.label;
    state.dirty = false;
    renderTurns(task.prompt);
    const hasReference = typeof task.reference === "string" && task.reference.length > 0;
    $("reference-box").hidden = !hasReference;
    $("reference").textContent = hasReference ? task.reference : "";
    $("text-A").textContent = task.answers.A;
    $("text-B").textContent = task.answers.B;
    const scores = task.label ? task.label.scores : null;
    renderScores("A", scores);
    renderScores("B", scores);
    $("corrected").value = (task.label && task.label.corrected) || "";
    $("note").value = (task.label && task.label.note) || "";
    showVerdict(state.verdict);
    document.body.dataset.task = task.id;
    if (state.pending.has(task.id)) {
      setStatus("offline", "未保存：正在重试连接服务器…");
    } else if (task.label) {
      setStatus("saved", "已保存 ✓");
    } else {
      setStatus("idle", "未标注");
    }
    showProgress();
    window.scrollTo(0, 0);
  }

  async function open(index) {
    if (!state.tasks.length) return;
    state.index = (index + state.tasks.length) % state.tasks.length;
    const id = state.tasks[state.index].id;
    try {
      const task = await api("GET", "/api/tasks/" + encodeURIComponent(id));
      if (state.tasks[state.index].id === id) render(task);
    } catch (error) {
      handleError(error, "无法载入任务");
    }
  }

  function nextUndone(from, includeFrom) {
    const n = state.tasks.length;
    for (let step = includeFrom ? 0 : 1; step < n; step += 1) {
      const i = (from + step) % n;
      if (!state.tasks[i].done && !state.pending.has(state.tasks[i].id)) return i;
    }
    return -1;
  }

  function collect() {
    const scores = {};
    document.querySelectorAll("select[data-side]").forEach((select) => {
      if (!select.value) return;
      const side = select.dataset.side;
      scores[side] = scores[side] || {};
      scores[side][select.dataset.criterion] = Number(select.value);
    });
    return {
      verdict: state.verdict,
      scores: Object.keys(scores).length ? scores : null,
      corrected: $("corrected").value || null,
      note: $("note").value || null,
    };
  }

  function markDirty() {
    state.dirty = true;
    if (state.verdict) setStatus("dirty", "有未保存的修改（按“保存”或 Ctrl+Enter）");
  }

  function handleError(error, what) {
    if (error instanceof ApiError && error.status === 401) {
      banner("此链接无效或已失效，请向负责人索取新的链接。");
      setStatus("error", "未授权");
    } else if (error instanceof ApiError) {
      setStatus("error", what + "：" + error.message);
    } else {
      setStatus("offline", what + "：无法连接服务器");
    }
  }

  async function send(id, label) {
    const data = await api("PUT", "/api/tasks/" + encodeURIComponent(id) + "/label", label);
    state.pending.delete(id);
    const entry = state.tasks.find((t) => t.id === id);
    if (entry) entry.done = true;
    showProgress(data);
    return data;
  }

  async function retryPending() {
    if (state.retrying) return;
    state.retrying = true;
    while (state.pending.size) {
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      for (const [id, label] of Array.from(state.pending.entries())) {
        try {
          const data = await send(id, label);
          if (state.task && state.task.id === id) afterSave(data);
        } catch (error) {
          if (error instanceof ApiError) {  // refused, not unreachable: retrying would not help
            state.pending.delete(id);
            if (state.task && state.task.id === id) handleError(error, "保存失败");
          }
        }
      }
    }
    state.retrying = false;
  }

  function afterSave(data) {
    state.saved = data.label;
    state.dirty = false;
    state.task.label = data.label;
    setStatus("saved", "已保存 ✓");
    if ($("auto").checked) {
      const next = nextUndone(state.index, false);
      if (next >= 0) open(next);
      else banner("全部完成，谢谢！可以用 ← → 回看和修改。");
    }
  }

  async function save() {
    if (!state.task) return;
    if (!state.verdict) {
      setStatus("error", "请先选择：A 更好 / B 更好 / 差不多 / 都不安全");
      return;
    }
    const id = state.task.id;
    const label = collect();
    state.pending.set(id, label);
    setStatus("saving", "保存中…");
    try {
      const data = await send(id, label);
      if (state.task && state.task.id === id) afterSave(data);
    } catch (error) {
      if (error instanceof ApiError) {
        state.pending.delete(id);
        handleError(error, "保存失败");
      } else {
        setStatus("offline", "未保存：无法连接服务器，正在重试…");
        retryPending();
      }
    }
  }

  function choose(verdict) {
    state.verdict = verdict;
    showVerdict(verdict);
    save();
  }

  function skip() {
    const next = nextUndone(state.index, false);
    if (next >= 0 && next !== state.index) open(next);
    else setStatus(state.task && state.task.label ? "saved" : "idle", "没有其他未完成的任务");
  }

  function onKey(event) {
    const typing = /^(TEXTAREA|INPUT|SELECT)$/.test(event.target.tagName);
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      save();
      return;
    }
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (VERDICT_KEYS[event.key]) {
      event.preventDefault();
      choose(VERDICT_KEYS[event.key]);
    } else if (event.key === "s" || event.key === "S") {
      event.preventDefault();
      skip();
    } else if (event.key === "ArrowRight") {
      event.preventDefault();
      open(state.index + 1);
    } else if (event.key === "ArrowLeft") {
      event.preventDefault();
      open(state.index - 1);
    }
  }

  function copyFrom(side) {
    if (!state.task) return;
    $("corrected").value = state.task.answers[side];
    $("corrected").focus();
    markDirty();
  }

  async function start() {
    document.querySelectorAll("button.verdict").forEach((button) => {
      button.addEventListener("click", () => choose(button.dataset.verdict));
    });
    $("save").addEventListener("click", save);
    $("skip").addEventListener("click", skip);
    $("prev").addEventListener("click", () => open(state.index - 1));
    $("next").addEventListener("click", () => open(state.index + 1));
    $("copy-A").addEventListener("click", () => copyFrom("A"));
    $("copy-B").addEventListener("click", () => copyFrom("B"));
    $("corrected").addEventListener("input", markDirty);
    $("note").addEventListener("input", markDirty);
    document.addEventListener("keydown", onKey);
    let me;
    try {
      me = await api("GET", "/api/me");
    } catch (error) {
      handleError(error, "无法载入");
      return;
    }
    $("who").textContent = me.annotator;
    state.criteria = me.criteria;
    state.tasks = me.tasks.map((t) => ({id: t.id, done: t.done}));
    if (!state.tasks.length) {
      banner("没有分配给您的任务。");
      return;
    }
    const first = nextUndone(0, true);
    if (first < 0) banner("全部完成，谢谢！可以用 ← → 回看和修改。");
    await open(first < 0 ? 0 : first);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
