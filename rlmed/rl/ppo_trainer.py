"""rlmed's PPO trainer: a transformers Trainer whose training step rolls out and takes PPO minibatches.

trl ≥ 1.13 ships no PPO; subclassing the Trainer keeps DeepSpeed/DDP, the optimizer, gradient accumulation,
checkpoints and resume theirs, so this module adds only the rollout, the loss and the checkpoint extras
(ppo_state.json, the value model under value/). How rollouts map onto the Trainer's micro-steps, optimizer steps
and checkpoints is explained once, in docs/architecture.md, "PPO".
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from rlmed import dist
from rlmed.models.dropout import disable_dropout
from rlmed.rl import ppo_math
from rlmed.rl.experience import left_pad, position_ids, response_mask, response_slice, token_logprobs
from rlmed.rl.policy_value import PolicyAndValue
from rlmed.rl.ppo_config import PPOSettings
from rlmed.rl.rewards import RewardCounter, over_limit
from rlmed.rl.rollout import (
    Experience, RolloutTotals, advantages, minibatch_plan, rollout_stats, rollout_totals, sample_rows, score_samples,
)

logger = logging.getLogger(__name__)
STATE_FILE = "ppo_state.json"
VALUE_DIR = "value"


class RolloutBatches:
    """A batch sampler: each rollout's prompt indices for this rank, repeated once per PPO micro-step.

    The order is fixed by the seed alone (a fresh shuffle per pass over the prompts), so it needs no state of
    its own to resume: the Trainer skips the batches of the rollouts already done.
    """

    def __init__(self, n_prompts: int, per_rank: int, world: int, rank: int, rollouts: int, repeats: int,
                 seed: int):
        needed = rollouts * per_rank * world
        order: list[int] = []
        passes = 0
        while len(order) < needed:
            shuffled = list(range(n_prompts))
            random.Random(seed * 100_003 + passes).shuffle(shuffled)
            order += shuffled
            passes += 1
        self.batches = [order[(k * world + rank) * per_rank:(k * world + rank + 1) * per_rank]
                        for k in range(rollouts)]
        self.repeats = repeats

    def __iter__(self):
        for batch in self.batches:
            for _ in range(self.repeats):
                yield batch

    def __len__(self) -> int:
        return len(self.batches) * self.repeats


class PPOTrainer(Trainer):
    """See the module docstring. `prompts` rows carry `ids` (the rendered, tokenised prompt), `messages` and
    `reference`; `reward_source` is any rlmed reward source."""

    def __init__(self, *, policy: nn.Module, value_model: nn.Module, ref_model: nn.Module | None,
                 settings: PPOSettings, prompts: list[dict[str, Any]], reward_source: Any, tokenizer: Any, args: Any,
                 callbacks: list[Any] | None = None,
                 sample_sink: Callable[[list[dict[str, Any]], int], None] | None = None):
        self.settings = settings
        self.prompts = prompts
        self.reward_source = reward_source
        self.ref_model = ref_model
        self._ref_ready = False
        self.sample_sink = sample_sink
        # Checked again here (the stage checks the recipe first) for a trainer built outside a stage.
        self.rollout_schedule = settings.schedule(args.per_device_train_batch_size, args.gradient_accumulation_steps)
        self.micro_per_rollout = self.rollout_schedule.micro_steps
        self.kl_controller: ppo_math.FixedKL = (
            ppo_math.AdaptiveKL(settings.kl_coef, settings.kl_target, settings.kl_horizon)
            if settings.kl_target is not None else ppo_math.FixedKL(settings.kl_coef))
        self.counter = RewardCounter()  # this rank's; summed over ranks at the end of each rollout
        self._accum = 0
        self._experience: Experience | None = None
        self._totals = RolloutTotals()
        self._pending: tuple[dict[str, float], list[dict[str, Any]]] | None = None
        self._saving_checkpoint = False
        self.run_counts = (0, 0)
        # Updates run in train mode, old log-probs and values in eval mode: with dropout on, their ratio at
        # unchanged weights would be noise instead of 1 (rlmed.models.dropout).
        logger.info("dropout set to 0 in %d places of the policy and value model",
                    disable_dropout(policy) + disable_dropout(value_model))
        super().__init__(model=PolicyAndValue(policy, value_model), args=args, train_dataset=list(range(len(prompts))),
                         processing_class=tokenizer, callbacks=callbacks)
        self.add_callback(_RolloutLogger(self))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    # --- data: one batch of prompt indices per PPO micro-step ---------------------------------------------
    def get_train_dataloader(self) -> Any:
        # Not prepared by accelerate: the sampler already gives each rank its own prompts, and accelerate's
        # sharding would split the repeated batches across ranks instead.
        sampler = RolloutBatches(len(self.prompts), self.settings.rollout_batch_size, dist.world_size(), dist.rank(),
                                 self.settings.num_rollouts, self.micro_per_rollout, self.args.seed)
        return torch.utils.data.DataLoader(self.train_dataset, batch_sampler=sampler,
                                           collate_fn=lambda idx: {"prompt_index": torch.tensor(idx)})

    # --- the rollout ----------------------------------------------------------------------------------------
    def _reference(self) -> nn.Module | None:
        """The frozen reference, prepared on first use (after the Trainer has set DeepSpeed up)."""
        if self.ref_model is None or self._ref_ready:
            return self.ref_model
        ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config if self.is_deepspeed_enabled else {}
        if ds_config.get("zero_optimization", {}).get("stage") == 3:
            import deepspeed

            # An inference engine with the training's ZeRO-3 settings: parameters stay partitioned, gathered
            # module by module in forward. No optimizer, no scheduler.
            config = {k: v for k, v in copy.deepcopy(ds_config).items() if k not in ("optimizer", "scheduler")}
            config["zero_optimization"].pop("offload_optimizer", None)
            self.ref_model = deepspeed.initialize(model=self.ref_model, config=config)[0]
        else:
            self.ref_model.to(self.args.device)
        self.ref_model.eval()
        self._ref_ready = True
        return self.ref_model

    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        from trl.models.utils import unwrap_model_for_generation

        from rlmed.sampling import generate_with, sampling_config

        s = self.settings
        # softmax(logits / T), as the old and reference log-probs assume: nothing from generation_config.json.
        config = sampling_config(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                 pad_token_id=self.pad_id, eos_token_id=self.eos_id)
        width = prompt_ids.shape[1]
        chunks = []
        # Under ZeRO-3 the parameters are gathered once for the whole generation, not per forward call.
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            policy = unwrapped.policy
            was_training = policy.training
            policy.eval()
            for start in range(0, len(prompt_ids), s.generation_batch_size):
                rows = slice(start, start + s.generation_batch_size)
                with torch.no_grad():
                    out = generate_with(policy, config, input_ids=prompt_ids[rows].to(self.args.device),
                                        attention_mask=prompt_mask[rows].to(self.args.device))
                chunks.append(out[:, width:].cpu())
            policy.train(was_training)
        longest = max(c.shape[1] for c in chunks)
        return torch.cat([nn.functional.pad(c, (0, longest - c.shape[1]), value=self.pad_id) for c in chunks])

    def _forward_logps(self, exp_rows: slice, seq: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                       responses: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old policy log-probs, values and reference log-probs of some rows, without gradients."""
        device = self.args.device
        seq, attn, pos, responses = (t[exp_rows].to(device) for t in (seq, attn, pos, responses))
        temperature = self.settings.temperature
        model = self.model  # the bare module: ZeRO-3's hooks gather each submodule's parameters in forward
        logits, values = model(seq, attn, pos)
        logp = token_logprobs(response_slice(logits, width), responses, temperature)
        del logits
        reference = self._reference()
        if reference is None:  # LoRA policy: the reference is the base model, i.e. the adapter switched off
            with model.policy.disable_adapter():
                ref_logits, _ = model(seq, attn, pos, with_values=False)
        else:
            ref_logits = reference(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False).logits
        ref_logp = token_logprobs(response_slice(ref_logits, width), responses, temperature)
        return logp.cpu(), response_slice(values, width).cpu(), ref_logp.cpu()

    def _old_and_reference(self, sequences: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                           responses: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old log-probs, values and reference log-probs of the whole rollout, one micro-batch at a time, without
        gradients and in eval mode."""
        parts: list[list[torch.Tensor]] = [[], [], []]
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            step = self.args.per_device_train_batch_size
            for start in range(0, len(sequences), step):
                for part, value in zip(parts, self._forward_logps(slice(start, start + step), sequences, attention,
                                                                  positions, responses, width)):
                    part.append(value)
            self.model.train(was_training)
        old_logp, old_values, ref_logp = (torch.cat(p) for p in parts)
        return old_logp, old_values, ref_logp

    def _rollout(self, indices: list[int]) -> Experience:
        """Generate, score, run the no-gradient forwards, then the math (rlmed.rl.rollout); keeps the rollout's
        totals and sample rows for _finish_rollout."""
        s = self.settings
        rows = [self.prompts[i] for i in indices]
        prompt_ids, prompt_mask = left_pad([r["ids"] for r in rows], self.pad_id)
        width = prompt_ids.shape[1]

        started = time.perf_counter()
        responses = self._generate(prompt_ids, prompt_mask)
        generated = time.perf_counter()
        mask, missing_eos = response_mask(responses, self.eos_id, self.pad_id)
        texts = [self.processing_class.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(responses, mask)]
        scored = score_samples(self.reward_source, rows, texts)
        scored_at = time.perf_counter()
        self.counter.add(scored.scores)

        sequences = torch.cat([prompt_ids, responses], dim=1)
        attention = torch.cat([prompt_mask, mask], dim=1)
        positions = position_ids(attention)
        old_logp, old_values, ref_logp = self._old_and_reference(sequences, attention, positions, responses, width)
        adv = advantages(scored, old_logp, ref_logp, old_values, mask, missing_eos, self.kl_controller.beta, s)
        plan = minibatch_plan(len(rows), s.ppo_epochs, self.args.per_device_train_batch_size)

        self._totals = rollout_totals(scored, adv.kl, mask, missing_eos, {
            "time_generation": generated - started, "time_scoring": scored_at - generated,
            "time_experience": time.perf_counter() - scored_at})
        self._samples = sample_rows(rows, texts, scored.scores, s.samples_logged)
        return Experience(sequences, attention, positions, responses, width, old_logp, old_values, adv.advantages,
                          adv.returns, adv.loss_mask, plan)

    # --- the update -----------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        g = self.args.gradient_accumulation_steps
        micro = self.state.global_step * g + self._accum
        self._accum = (self._accum + 1) % g
        k = micro % self.micro_per_rollout
        if k == 0:
            self._experience = self._rollout(inputs["prompt_index"].tolist())
            self._update_started = time.perf_counter()
        e = self._experience
        assert e is not None, "a PPO micro-step ran before its rollout (resumed off a rollout boundary?)"
        rows = e.plan[k]
        device = self.args.device
        model.train()
        logits, values = model(e.sequences[rows].to(device), e.attention_mask[rows].to(device),
                               e.position_ids[rows].to(device))
        logits = response_slice(logits, e.prompt_width)
        logp = token_logprobs(logits, e.responses[rows].to(device), self.settings.temperature)
        loss_mask = e.loss_mask[rows].to(device)
        policy = ppo_math.policy_loss(logp, e.old_logp[rows].to(device), e.advantages[rows].to(device), loss_mask,
                                      self.settings.cliprange)
        value_loss, value_clipped = ppo_math.value_loss(
            response_slice(values, e.prompt_width), e.old_values[rows].to(device), e.returns[rows].to(device),
            loss_mask, self.settings.cliprange_value)
        loss = policy.loss + self.settings.vf_coef * value_loss
        with torch.no_grad():
            entropy = ppo_math.masked_mean(ppo_math.entropy_from_logits(logits / self.settings.temperature), loss_mask)
            if k < self.args.gradient_accumulation_steps:  # still the weights that computed old_logp: r must be 1
                ratio = torch.exp(logp - e.old_logp[rows].to(device))
                self._totals.keep_max("ratio_error", float(((ratio - 1).abs() * loss_mask).max()))
        self._totals.add(micro_steps=1, policy_loss=float(policy.loss.detach()), value_loss=float(value_loss.detach()),
                         clip_fraction=float(policy.clip_fraction), approx_kl=float(policy.approx_kl),
                         value_clip_fraction=float(value_clipped), entropy=float(entropy))

        kwargs = {"scale_wrt_gas": False} if self.is_deepspeed_enabled else {}
        loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss, **kwargs)
        if k == self.micro_per_rollout - 1:
            self._totals.add(time_training=time.perf_counter() - self._update_started)
            self._finish_rollout(micro // self.micro_per_rollout)
        return loss.detach()

    def _finish_rollout(self, rollout: int) -> None:
        """Add the rollout's totals across ranks, update the KL controller, check unscored samples, queue logs."""
        keys = sorted(self._totals.sums)
        local = [self._totals.sums[k] for k in keys] + [self.counter.total, self.counter.unscored]
        summed = dist.all_sum(local)
        totals = dict(zip(keys, summed[:-2]))
        run_total, run_unscored = int(summed[-2]), int(summed[-1])
        self.run_counts = (run_total, run_unscored)  # what a checkpoint at this rollout's end records
        if over_limit(run_total, run_unscored, self.settings.max_failed_fraction):
            raise RuntimeError(f"{run_unscored} of {run_total} samples could not be scored by the reward source (more "
                               f"than max_failed_fraction={self.settings.max_failed_fraction}); first errors on "
                               f"this rank: {self.counter.first_errors}")
        stats = rollout_stats(totals, rollout, run_unscored, dist.world_size(), self.kl_controller.beta)
        self.kl_controller.update(stats["kl"], int(totals["samples"]))
        self._pending = (stats, self._samples if dist.is_main() else [])
        self._experience = None

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:  # before the Trainer's files: trainer_state.json (written last) marks completion
            from rlmed.artifacts import atomic_write_json

            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / STATE_FILE, {
                "kl_controller": self.kl_controller.state_dict(), "rewards_total": self.run_counts[0],
                "rewards_unscored": self.run_counts[1]})
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint:
            state_file = Path(resume_from_checkpoint) / STATE_FILE
            if not state_file.is_file():
                raise RuntimeError(f"{resume_from_checkpoint} has no {STATE_FILE}: it was not written by rlmed's PPO "
                                   "trainer, or is incomplete; delete it to start over")
            state = json.loads(state_file.read_text(encoding="utf-8"))
            self.kl_controller.load_state_dict(state["kl_controller"])
            # The saved counts are over all ranks: the main rank carries them on, the others restart at 0, so
            # their sum in the next rollout is right.
            self.counter.total = state["rewards_total"] if dist.is_main() else 0
            self.counter.unscored = state["rewards_unscored"] if dist.is_main() else 0
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the policy as an ordinary model (or adapter) folder; in checkpoints also the value model."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        if state_dict is None:
            state_dict = self.model.state_dict()
        module = self.accelerator.unwrap_model(self.model)
        os.makedirs(output_dir, exist_ok=True)
        parts = {"policy": module.policy, "value_model": module.value_model}
        for name, part in parts.items():
            if name == "value_model" and not self._saving_checkpoint:
                continue
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            target = output_dir if name == "policy" else os.path.join(output_dir, VALUE_DIR)
            part.save_pretrained(target, state_dict=sub, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Without DeepSpeed (whose engine checkpoint holds everything), reload both halves from `_save`'s folders."""
        module = self.accelerator.unwrap_model(model or self.model)
        load_weights(module.policy, Path(resume_from_checkpoint))
        load_weights(module.value_model, Path(resume_from_checkpoint) / VALUE_DIR)


class _RolloutLogger(TrainerCallback):
    """Logs a finished rollout's statistics once its last optimizer step is counted (so before any checkpoint
    of that step), and hands its sample rows to the stage's table sink."""

    def __init__(self, trainer: PPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        pending, self.trainer._pending = self.trainer._pending, None
        if pending is None:
            return
        stats, samples = pending
        self.trainer.log(stats)
        if samples and self.trainer.sample_sink is not None:
            self.trainer.sample_sink([{"rollout": stats["rollout"], **row} for row in samples], state.global_step)


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load a folder written by save_pretrained into an existing model (full weights or a peft adapter)."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise RuntimeError(f"{folder}: adapter weights that the model does not have: {result.unexpected_keys[:5]}")
        return
    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in weights if k in current}
    untied_missing = [k for k in missing if current[k].data_ptr() not in loaded]  # tied copies are not saved
    if unexpected or untied_missing:
        raise RuntimeError(f"{folder}: checkpoint does not match the model (missing {untied_missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
