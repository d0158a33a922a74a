"""`rlmed chat MODEL_OR_STAGE`: talk to any model a run produced, right after training.

The model is loaded the way stages load inputs (rlmed.models.loading: a full model, a LoRA adapter or a chain
of them, a MoLE adapter, or an exported folder), prompts are rendered with its chat template, and the answer
streams token by token. The conversation keeps its history until `/reset`; `/exit` (or end of input) ends it.
Sampling is plain (rlmed.sampling: temperature 0 is greedy), so what the chat shows is what the evaluation
measured, not what a generation_config.json file might add.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread
from typing import Any, Callable, Iterator, TextIO

from rlmed.artifacts import read_manifest

__all__ = ["ChatError", "Chat", "resolve_model", "repl"]

HELP = "/reset starts a new conversation, /exit ends the chat"


class ChatError(ValueError):
    """The model or stage cannot be chatted with; the message says what to give instead."""


def resolve_model(target: str, run_dir: Path | None) -> str:
    """A stage id (with `run_dir`) -> that stage's model folder (its merged model when it wrote one);
    a folder or Hub id -> itself."""
    if run_dir is not None:
        stage_dir = Path(run_dir) / target
        if not stage_dir.is_dir():
            stages = sorted(p.name for p in Path(run_dir).iterdir() if (p / "manifest.json").exists()) \
                if Path(run_dir).is_dir() else []
            raise ChatError(f"{run_dir} has no stage '{target}' (finished stages: {', '.join(stages) or 'none'})")
        manifest = read_manifest(stage_dir)
        if manifest is None:
            raise ChatError(f"stage '{target}' in {run_dir} has not finished (no manifest.json); run it first")
        outputs = manifest.get("outputs", {})
        for name in ("merged", "model"):
            if name in outputs and Path(outputs[name]).exists():
                return outputs[name]
        raise ChatError(f"stage '{target}' ({manifest.get('kind')}) wrote no model to chat with")
    return target


@dataclass
class Chat:
    """One conversation with a loaded model: `reply(text)` streams the answer's pieces and keeps the history."""

    model_path: str
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    system: str | None = None
    dtype: str = "auto"
    seed: int | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        from rlmed.models.loading import load_causal_lm, load_tokenizer

        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ChatError(f"temperature must be >= 0, top_p within (0, 1] and max_new_tokens >= 1, got "
                            f"temperature={self.temperature}, top_p={self.top_p}, "
                            f"max_new_tokens={self.max_new_tokens}")
        self.tokenizer = load_tokenizer(self.model_path)
        if not self.tokenizer.chat_template:
            raise ChatError(f"the model at {self.model_path} has no chat template, so a conversation cannot be "
                            f"rendered for it; chat with an sft (or later) stage's model")
        self.model = load_causal_lm(self.model_path, dtype=self.dtype).eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to `text` in pieces as they are decoded; the whole answer joins the history."""
        from transformers import TextIteratorStreamer

        from rlmed.data.chat import render_prompt
        from rlmed.sampling import generate_with, sampling_config

        self.history.append({"role": "user", "content": text})
        prompt = render_prompt(self.tokenizer, self.history)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        config = sampling_config(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate() -> None:
            import torch

            try:
                with torch.no_grad():
                    generate_with(self.model, config, **inputs, streamer=streamer)
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                streamer.end()

        worker = Thread(target=generate, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        worker.join()
        if failure:
            self.history.pop()
            raise failure[0]
        self.history.append({"role": "assistant", "content": "".join(pieces).strip()})


def repl(chat: Chat, read: Callable[[], str | None], out: TextIO | None = None, prompt: str = "> ") -> int:
    """The conversation loop: `read()` gives the next line (None at the end of input); answers stream to `out`
    (default: the current sys.stdout)."""
    out = out or sys.stdout
    out.write(f"chatting with {chat.model_path} ({HELP})\n")
    out.flush()
    while True:
        out.write(prompt)
        out.flush()
        line = read()
        if line is None:
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            out.write("(new conversation)\n")
            continue
        if text.startswith("/"):
            out.write(f"unknown command {text} ({HELP})\n")
            continue
        for piece in chat.reply(text):
            out.write(piece)
            out.flush()
        out.write("\n")


def read_line(stream: TextIO | None = None) -> Callable[[], str | None]:
    def read() -> str | None:
        line = (stream or sys.stdin).readline()
        return None if line == "" else line

    return read


def chat_command(args: Any) -> int:
    from rlmed.models.loading import ModelLoadError

    try:
        path = resolve_model(args.model, args.run_dir)
        chat = Chat(path, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                    system=args.system, dtype=args.dtype, seed=args.seed)
    except (ChatError, ModelLoadError) as exc:
        print(f"rlmed chat: {exc}", file=sys.stderr)
        return 2
    return repl(chat, read_line())
