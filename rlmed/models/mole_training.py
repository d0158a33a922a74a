"""Training a MoLE adapter with trl's SFTTrainer: the load-balancing loss and routing statistics per task.

`MoleSFTTrainer` adds `aux_loss_coef · mole.aux_loss` to SFT's loss, averaged over the gradient-accumulation
window as SFT's loss is, so its weight does not grow with gradient_accumulation_steps. `RoutingStats` measures,
at the start, every `every` steps and at the end, how the router spreads the tokens of each task over the
specific experts: per task the mean gate of every expert (over tokens and adapted layers) and the mean per-token
gate entropy, plus the mean distance between the tasks' mean gate vectors (0 at initialisation, when every gate
is uniform).
The probe forward passes run on every rank (under ZeRO-3 a forward is a collective) in eval mode, so no noise.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from rlmed.models import mole


class MoleSFTTrainer(SFTTrainer):
    def __init__(self, *args: Any, aux_loss_coef: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.aux_loss_coef = aux_loss_coef

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if return_outputs or not (self.aux_loss_coef and model.training):  # evaluation: SFT's loss as it is
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        # Without return_outputs: with it trl recomputes the logits in a second, no-grad forward, and the router
        # statistics aux_loss reads would be that forward's.
        loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        balance = mole.aux_loss(self.model, inputs.get("attention_mask"))
        self._metrics["train"]["aux_loss"].append(balance.detach().item())  # unweighted, one micro-batch's
        return loss + self.aux_loss_coef * balance / self._accumulation_divisor(num_items_in_batch)

    def _accumulation_divisor(self, num_items_in_batch: Any) -> int:
        """What the balancing term (a per-micro-batch mean) is divided by. When the SFT loss is normalised over
        the whole accumulation window (num_items_in_batch) the Trainer no longer divides the returned loss by
        the accumulation steps, so an undivided term would weigh coef x steps; when the Trainer divides it
        itself, dividing here too would weigh coef / steps. The test is Trainer.training_step's."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = ((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                      or self.compute_loss_func is not None)
        return self.current_gradient_accumulation_steps if scaled else 1


def probe_batches(tokenizer: Any, rows_by_task: dict[str, list[tuple[list[int], list[int]]]]
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """Each task's probe rows (token ids, assistant mask) as one right-padded batch. The statistics are taken
    over the assistant's tokens: the chat template's tokens are the same in every task and would blur them."""
    out = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for task, rows in rows_by_task.items():
        width = max(len(ids) for ids, _ in rows)
        batch = {name: torch.full((len(rows), width), pad if name == "input_ids" else 0, dtype=torch.long)
                 for name in ("input_ids", "attention_mask", "stats_mask")}
        for i, (ids, assistant) in enumerate(rows):
            batch["input_ids"][i, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][i, : len(ids)] = 1
            batch["stats_mask"][i, : len(ids)] = torch.tensor(assistant)
        out[task] = batch
    return out


@torch.no_grad()
def routing_stats(model: Any, batches: dict[str, dict[str, torch.Tensor]], device: Any) -> dict[str, float]:
    """Per task: mean gate of each expert and mean per-token entropy; and the mean distance between tasks."""
    was_training = model.training
    model.eval()
    stats: dict[str, float] = {}
    means: dict[str, torch.Tensor] = {}
    try:
        for task, batch in batches.items():
            with mole.recording(model):
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
                gates = torch.cat(list(mole.last_gates(model, batch["stats_mask"].to(device)).values()))
            gates = gates.float().cpu()
            means[task] = gates.mean(dim=0)
            entropy = -(gates.clamp(min=1e-12).log() * gates).sum(dim=1).mean().item()
            for j, value in enumerate(means[task].tolist()):
                stats[f"routing/{task}/gate_{j}"] = value
            stats[f"routing/{task}/entropy"] = entropy
            stats[f"routing/{task}/entropy_max"] = math.log(gates.shape[1])
    finally:
        model.train(was_training)
    pairs = list(itertools.combinations(sorted(means), 2))
    if pairs:
        stats["routing/task_distance"] = sum(float(torch.dist(means[a], means[b])) for a, b in pairs) / len(pairs)
    return stats


class RoutingStats(TrainerCallback):
    """Logs routing_stats to the stage's metrics (and so W&B) at the start, every `every` steps and at the end."""

    def __init__(self, model: Any, batches: dict[str, dict[str, torch.Tensor]], every: int, log: Any):
        self.model, self.batches, self.every, self.log = model, batches, every, log
        self.first: dict[str, float] | None = None
        self.last: dict[str, float] | None = None

    def _measure(self, state: Any) -> None:
        stats = routing_stats(self.model, self.batches, next(self.model.parameters()).device)
        if self.first is None:
            self.first = stats
        self.last = stats
        if state.is_world_process_zero:
            self.log(stats, step=state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self._measure(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self._measure(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._measure(state)
