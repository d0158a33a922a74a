"""`rlmed chat`: the model a run produced answers with its chat template, streamed, keeping the conversation's
history until /reset; a stage id resolves to the stage's model."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from rlmed.chat import Chat, ChatError, repl, resolve_model
from tests.stages.conftest import run_recipe, sample


def greedy(chat: Chat, messages: list[dict]) -> str:
    """What the model answers to `messages`, generated directly (no streamer, no chat state)."""
    from rlmed.data.chat import render_prompt
    from rlmed.sampling import generate_with, sampling_config

    tokenizer = chat.tokenizer
    enc = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
    config = sampling_config(temperature=0, max_new_tokens=chat.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = generate_with(chat.model, config, **enc)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    """A run whose sft stage trained a few steps: enough for the model to say something (a random one may only
    emit special tokens), which the chat must show exactly as the model generates it."""
    root = tmp_path_factory.mktemp("chat")
    stages = [{"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
               "args": {"validation_fraction": 0, "num_samples": 32},
               "trainer": {"max_steps": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 8,
                           "max_length": 256}}]
    assert run_recipe(root, stages) == 0
    return root / "run"


def test_answers_stream_and_the_history_carries_into_the_next_turn_until_reset(run_dir):
    chat = Chat(resolve_model("sft", run_dir), temperature=0, max_new_tokens=12, system="你是儿科医生。")
    first_pieces = list(chat.reply("孩子发烧三天怎么办"))
    first = "".join(first_pieces).strip()
    assert first and first == greedy(chat, [{"role": "system", "content": "你是儿科医生。"},
                                            {"role": "user", "content": "孩子发烧三天怎么办"}])
    second = "".join(chat.reply("需要去医院吗")).strip()
    assert second == greedy(chat, [{"role": "system", "content": "你是儿科医生。"},
                                   {"role": "user", "content": "孩子发烧三天怎么办"},
                                   {"role": "assistant", "content": first},
                                   {"role": "user", "content": "需要去医院吗"}])
    assert [m["role"] for m in chat.history] == ["system", "user", "assistant", "user", "assistant"]
    chat.reset()
    assert chat.history == [{"role": "system", "content": "你是儿科医生。"}]
    assert "".join(chat.reply("需要去医院吗")).strip() == greedy(chat, [
        {"role": "system", "content": "你是儿科医生。"}, {"role": "user", "content": "需要去医院吗"}])


def test_the_loop_handles_commands_and_end_of_input(run_dir):
    chat = Chat(resolve_model("sft", run_dir), temperature=0, max_new_tokens=4)
    lines = iter(["你好\n", "/reset\n", "/oops\n", "\n", "再见\n"])
    out = io.StringIO()
    assert repl(chat, lambda: next(lines, None), out) == 0
    text = out.getvalue()
    assert "(new conversation)" in text and "unknown command /oops" in text
    assert [m["content"] for m in chat.history if m["role"] == "user"] == ["再见"]  # reset dropped 你好


def test_stage_ids_resolve_to_finished_models_and_others_are_refused(run_dir, tmp_path):
    assert resolve_model("sft", run_dir) == str(run_dir / "sft" / "model")
    assert resolve_model("/some/folder", None) == "/some/folder"
    with pytest.raises(ChatError, match=r"has no stage 'dpo' \(finished stages: sft\)"):
        resolve_model("dpo", run_dir)
    (run_dir / "half").mkdir()
    with pytest.raises(ChatError, match="has not finished"):
        resolve_model("half", run_dir)
    with pytest.raises(ChatError, match="temperature must be >= 0"):
        Chat(str(run_dir / "sft" / "model"), temperature=-1)


def test_the_command_chats_over_stdin(run_dir, monkeypatch, capsys):
    from rlmed.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n/exit\n"))
    assert main(["chat", "sft", "--run-dir", str(run_dir), "--temperature", "0", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith(f"chatting with {run_dir / 'sft' / 'model'}")
    assert main(["chat", "nope", "--run-dir", str(run_dir)]) == 2
    assert "has no stage 'nope'" in capsys.readouterr().err
