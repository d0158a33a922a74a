"""DFPOTrainer's own loss carries DFPO's term: loss(μ) - loss(0) = μ · mean over pairs of each chosen answer's NLL.

The NLL is computed here independently, with plain torch from a fresh copy of the model's logits, not through the
trainer or rlmed.rl.dpo_math. Per methods.md §5 an answer's NLL is the mean over its own tokens,
-(1/|y_w|) Σ_t log π(y_w,t). The batch's chosen answers are a short, cheap one and a long, dear one, so a sum over
tokens, a token mean over the whole batch, or the rejected answers' NLL each give a clearly different term (measured:
the term 4.49; those 121, 5.77 and 6.35; checked in the test, so it cannot pass with one of them).
"""

from __future__ import annotations

import copy

import pytest
import torch

MU = 0.5
# The tiny model is freshly initialised: every token's NLL is near ln(2048), so all normalisations would give about
# the same term. Its output layer is tied to the embeddings; scaled up, each position predicts its own token, so an
# answer repeating one token is cheap and a varied one dear (measured on this tokenizer: 0.17 vs 13 nats a token).
LOGIT_SCALE = 10.0
SHORT, LONG = "好好好好好好", "先观察精神和呼吸，多喝温水，夜间抬高枕头；如果气促、高热或超过一周不好，请及时就医。"


def preference_rows() -> list[dict]:
    """Two pairs: a short, cheap chosen answer and a long, dear one, so per-answer and per-batch means differ."""
    def row(question: str, chosen: str, rejected: str) -> dict:
        return {"prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    return [row("孩子咳嗽怎么办？", SHORT, "没事。"), row("发烧三天了，要紧吗？", LONG, "随便。")]


def token_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of each completion token and the mask of those tokens, from the model's logits.  [2B, L-1]"""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].float()
    return -logps * mask, mask


@pytest.fixture(scope="module")
def trainer_and_batch(tiny_model, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from rlmed.rl.dfpo_trainer import DFPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():  # see LOGIT_SCALE
        model.lm_head.weight.mul_(LOGIT_SCALE)
    fresh_copy = copy.deepcopy(model)  # taken before the trainer sees the model
    config = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dfpo")), report_to=[], use_cpu=True, bf16=False,
                       per_device_train_batch_size=2, beta=0.1, max_length=128)
    trainer = DFPOTrainer(model=model, args=config,
                          train_dataset=Dataset.from_list(preference_rows()),
                          processing_class=AutoTokenizer.from_pretrained(tiny_model), nll_weight=MU)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    return trainer, batch, fresh_copy


def trainer_loss(trainer, batch: dict, nll_weight: float) -> float:
    trainer.nll_weight = nll_weight
    try:
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item()
    finally:
        trainer.nll_weight = MU


def test_trainer_loss_adds_mu_times_the_chosen_answers_mean_token_nll(trainer_and_batch):
    trainer, batch, fresh_model = trainer_and_batch
    nll, mask = token_nll(fresh_model, batch)
    pairs = batch["input_ids"].size(0) // 2  # the batch is [chosen; rejected]
    per_answer = nll.sum(dim=1) / mask.sum(dim=1)
    expected = MU * per_answer[:pairs].mean().item()

    added = trainer_loss(trainer, batch, MU) - trainer_loss(trainer, batch, 0.0)

    assert added == pytest.approx(expected, rel=1e-4)
    # The test tells DFPO's term from its look-alikes: each differs from it by far more than the tolerance.
    look_alikes = {"sum over tokens": MU * nll[:pairs].sum(dim=1).mean().item(),
                   "token mean over the batch": MU * (nll[:pairs].sum() / mask[:pairs].sum()).item(),
                   "rejected answers": MU * per_answer[pairs:].mean().item()}
    for name, value in look_alikes.items():
        assert value != pytest.approx(expected, rel=0.05), name
