"""MoleSFTTrainer: the load-balancing loss weighs aux_loss_coef whatever gradient_accumulation_steps is.

The runs compared see the same rows: gradient_accumulation_steps=4 over micro-batches of the same 2 rows, and
one micro-batch of those 4 copies. The SFT loss (normalised over the whole accumulation window) and the
balancing loss (a function of the token statistics, equal for one copy or four) are then the same in both, so
the accumulated gradient on every trainable weight, and the logged losses, must be too. Noise and dropout are
off, so the forwards are deterministic.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, TrainerCallback

from rlmed.models import mole
from rlmed.models.mole_training import MoleSFTTrainer

COEF = 0.5  # large, so an aux term weighted 4x shows far above float noise
ROWS = [list(range(5, 25)), list(range(30, 42))]  # different lengths: padding is masked out of the statistics


class GradsBeforeStep(TrainerCallback):
    """Keeps the accumulated gradients of the trainable weights just before the optimizer step."""

    def __init__(self, model):
        self.model, self.grads = model, {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


def fresh_model(tiny_model, dtype: torch.dtype = torch.float32):
    """The same MoLE model on every call."""
    torch.manual_seed(0)
    model = mole.wrap(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype),
                      mole.MoleSettings(r=4, alpha=8, num_experts=3, dropout=0.0, noisy_gating=False,
                                        aux_loss_coef=COEF))
    for name, module in model.named_modules():  # live experts and a non-uniform router: both losses reach W_g
        if isinstance(module, mole.MoleLinear):
            nn.init.normal_(module.lora_experts_B["default"].weight, std=0.05)
            nn.init.normal_(module.lora_router["default"].weight, std=0.5)
    return model


def one_step(tiny_model, tiny_tokenizer, tmp_path, accumulation: int, batch: int, copies: int,
             accepts_loss_kwargs: bool, coef: float = COEF, dtype: torch.dtype = torch.float32
             ) -> tuple[dict[str, torch.Tensor], dict]:
    from trl import SFTConfig

    model = fresh_model(tiny_model, dtype)
    config = SFTConfig(output_dir=str(tmp_path / f"ga{accumulation}_coef{coef}"), max_steps=1, learning_rate=1e-3,
                       per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                       train_sampling_strategy="sequential", max_grad_norm=0.0, logging_steps=1,
                       save_strategy="no", report_to="none", use_cpu=True, gradient_checkpointing=False,
                       dataloader_num_workers=0, seed=0)
    grads = GradsBeforeStep(model)
    trainer = MoleSFTTrainer(model=model, args=config, processing_class=tiny_tokenizer,
                             train_dataset=Dataset.from_list([{"input_ids": r} for r in ROWS * copies]),
                             callbacks=[grads], aux_loss_coef=coef)
    # False: the model takes no num_items_in_batch, so the Trainer divides the whole loss by the steps itself.
    trainer.model_accepts_loss_kwargs = accepts_loss_kwargs
    trainer.train()
    logged = next(r for r in trainer.state.log_history if "loss" in r)
    return grads.grads, logged


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False])
def test_balancing_weight_does_not_grow_with_gradient_accumulation(tiny_model, tiny_tokenizer, tmp_path,
                                                                    accepts_loss_kwargs):
    accumulated, logged_4 = one_step(tiny_model, tiny_tokenizer, tmp_path, accumulation=4, batch=2, copies=4,
                                     accepts_loss_kwargs=accepts_loss_kwargs)
    single, logged_1 = one_step(tiny_model, tiny_tokenizer, tmp_path, accumulation=1, batch=8, copies=4,
                                accepts_loss_kwargs=accepts_loss_kwargs)
    routers = [n for n in single if "lora_router" in n]
    assert routers and all(single[n].abs().sum() > 0 for n in routers)
    for name in routers + [n for n in single if n not in routers]:  # the routers first: the term acts there
        gap, scale = (accumulated[name] - single[name]).abs().max().item(), single[name].abs().max().item()
        assert gap <= 1e-4 * scale + 1e-7, f"{name}: gradients differ by {gap:.3g} (largest {scale:.3g})"
    # The logged training loss is SFT + coef x balancing in both; the logged balancing loss is unweighted.
    assert logged_4["loss"] == pytest.approx(logged_1["loss"], rel=1e-4)
    assert logged_4["aux_loss"] == pytest.approx(logged_1["aux_loss"], rel=1e-4) and logged_1["aux_loss"] > 0


def test_balancing_term_adds_coef_times_its_own_gradient(tiny_model, tiny_tokenizer, tmp_path):
    """The trainer's step with the term minus the step without it is coef x the gradient of aux_loss alone,
    computed here on the same padded batch: the balancing loss reaches the routers, at its weight."""
    # Float64: the SFT gradients are hundreds of times the balancing term's, and in float32 the difference of
    # two steps carries about 1% rounding error.
    with_term, _ = one_step(tiny_model, tiny_tokenizer, tmp_path, accumulation=1, batch=8, copies=4,
                            accepts_loss_kwargs=True, dtype=torch.float64)
    without, _ = one_step(tiny_model, tiny_tokenizer, tmp_path, accumulation=1, batch=8, copies=4,
                          accepts_loss_kwargs=True, coef=0.0, dtype=torch.float64)
    model = fresh_model(tiny_model, torch.float64).train()
    rows = ROWS * 4
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tiny_tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):  # right padding, as the trainer's collator pads
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    model(input_ids=ids, attention_mask=mask)
    mole.aux_loss(model, mask).backward()
    by_hand = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    routers = [n for n in by_hand if "lora_router" in n]
    assert routers and all(by_hand[n].abs().sum() > 0 for n in routers)
    for name in by_hand:
        expected = COEF * (by_hand[name] if by_hand[name] is not None else torch.zeros_like(with_term[name]))
        gap = (with_term[name] - without[name] - expected).abs().max().item()
        # Routing runs in float32 whatever the model's dtype (rlmed.models.mole._route): about 1e-6 relative.
        assert gap <= 1e-4 * max(expected.abs().max().item(), 1e-3), f"{name}: off by {gap:.3g}"
