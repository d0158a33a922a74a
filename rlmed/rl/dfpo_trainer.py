"""trl's DPOTrainer plus DFPO's length-normalised NLL on the chosen answer (PediatricsGPT, methods.md §5).

trl computes the preference loss (any of its loss types) and logs margins, accuracies and log-probs; this
subclass adds μ · mean over pairs of -(1/|y_w|) Σ_t log π(y_w,t) (each chosen answer's NLL is the mean over its
own tokens) through rlmed.rl.dpo_math.dfpo, the one implementation of the term: tests/unit/test_dpo_math.py checks
it by hand, tests/unit/test_dfpo_trainer_loss.py checks this trainer's loss against logits. The per-token
log-probs of the policy's forward are taken from that same forward (a hook on the model keeps its output), so
the extra term costs no extra pass. trl's own "sft" loss type is a token mean over the batch, which is not
DFPO's per-answer normalisation.
"""

from __future__ import annotations

from typing import Any

from trl import DPOTrainer

from rlmed.rl.dpo_math import chosen_nll, dfpo


class DFPOTrainer(DPOTrainer):
    def __init__(self, *args: Any, nll_weight: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.nll_weight = nll_weight
        self._capture = False
        self._captured: Any = None
        if nll_weight:
            self.model.register_forward_hook(self._keep_output)

    def _keep_output(self, module: Any, args: Any, output: Any) -> None:
        # The first forward inside _compute_loss is the policy's on [chosen; rejected]; the reference's comes later.
        if self._capture:
            self._captured, self._capture = output, False

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        self._capture, self._captured = bool(self.nll_weight), None
        result = super()._compute_loss(model, inputs, return_outputs)
        if not self.nll_weight:
            return result
        loss, rest = (result[0], result[1:]) if return_outputs else (result, ())
        if self._captured is None or getattr(self._captured, "log_probs", None) is None:
            raise RuntimeError("DFPO: the policy's per-token log-probs were not seen in this step")
        shift_mask = inputs["completion_mask"][..., 1:]
        per_token = self._captured.log_probs[:, -shift_mask.size(1):]
        chosen_logps, _ = per_token.chunk(2, dim=0)  # the batch is [chosen; rejected]
        chosen_mask, _ = shift_mask.chunk(2, dim=0)
        self._captured = None
        mode = "train" if self.model.training else "eval"
        nll = chosen_nll(chosen_logps.detach(), chosen_mask)  # logged only; the loss's own comes from dfpo()
        self._metrics[mode]["dfpo_nll"].append(self.accelerator.gather(nll).mean().item())
        loss = dfpo(loss, chosen_logps, chosen_mask, self.nll_weight)  # trl's loss is already the mean over pairs
        return (loss, *rest) if return_outputs else loss
