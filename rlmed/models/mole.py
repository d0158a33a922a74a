"""Mixture of universal-specific LoRA experts (MoLE, as in PediatricsGPT), on stock peft.

Every adapted linear layer gets one universal expert (always on, weight 1) and T specific experts, each a LoRA
pair, plus a per-token router over the specific experts:

    h = x·W_g + ε ⊙ softplus(x·W_n),  ε ~ N(0, I) in training only      (noisy gating; W_n is trained and saved)
    g = softmax(h)                                                     (top-k: keep k, renormalise, others 0)
    y = W0·x + (α/r) · ( B_u A_u x + Σ_j g_j · B_j A_j x )

The layer (`MoleLinear`) is a peft LoRA layer plugged in through peft's custom-module hook
(`LoraConfig._register_custom_module`), so peft does the wrapping, freezing, saving and loading. Parameter
names (all under the tuner layer, so peft saves them; all start with `lora_`, so name-based filters keep them):

    lora_A / lora_B                 universal expert A_u [r, in] / B_u [out, r] (plain LoRA layout)
    lora_experts_A / lora_experts_B the T specific experts stacked: A [T·r, in] (rows j·r..(j+1)·r are A_j),
                                    B [out, T·r] (columns j·r..(j+1)·r are B_j)
    lora_router                     W_g [T, in]
    lora_noise                      W_n [T, in] (only with noisy_gating; an unused parameter would break DDP)

Folders:
- `save(model, dir)`: peft's adapter files (adapter_config.json + adapter_model.safetensors with every expert,
  router and noise weight) plus `mole_config.json` (the MoleSettings). `load(base, dir)` rebuilds the layers
  from mole_config.json and loads strictly (MoleLoadError naming the keys or fields).
- `export(adapter_dir, out_dir)`: a serving folder. `out_dir/` is a full transformers model (base with the
  universal expert merged), `out_dir/experts/` an adapter with the routed experts, router and noise only
  (mole_config.json there says `universal: false`). Load it with `load_exported(out_dir)`, or with plain
  transformers + peft — the custom layer must be registered on the config, which `peft_config` does:

      from peft import PeftModel
      from transformers import AutoModelForCausalLM
      from rlmed.models.mole import peft_config

      model = PeftModel.from_pretrained(
          AutoModelForCausalLM.from_pretrained(out_dir), f"{out_dir}/experts",
          config=peft_config(f"{out_dir}/experts"))

  (Without `config=`, peft would build plain LoRA layers and ignore the experts, router and noise weights.)
  The same call with the adapter folder and its base loads a training adapter.

A Trainer's `save_model` writes peft's files only; `save(model, dir, state_dict=...)` (the state dict the
Trainer gathers under ZeRO-3) or `save_settings(settings, dir)` adds mole_config.json.

Training notes: the load-balancing loss is `aux_loss(model)` after each forward; the caller adds
`settings.aux_loss_coef * aux_loss(model)` to its loss. It needs non-reentrant gradient checkpointing
(transformers' default, `use_reentrant=False`); under reentrant checkpointing the first forward runs without
grad and `aux_loss` says so. Nothing is created in forward and no parameter is changed in place there, so
gradient checkpointing and ZeRO-3 see an ordinary module; `merge_universal` and `export` work on unpartitioned
weights (export loads afresh, outside any ZeRO-3 context).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

MOLE_CONFIG = "mole_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPERTS_SUBDIR = "experts"
_PEFT_PREFIX = "base_model.model."
_MAX_LISTED = 8  # keys named in one error message; the count says how many more


@dataclass(kw_only=True)
class MoleSettings:
    r: int = 8
    """Rank of every expert (universal and specific)."""
    alpha: int = 16
    """Scale: each expert's update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the experts' input (the router sees the undropped input)."""
    num_experts: int = 3
    """T specific experts, routed per token (plus the universal one)."""
    top_k: int | None = None
    """None: dense routing (every gate > 0). k: keep the k largest gates per token, renormalised to sum 1."""
    noisy_gating: bool = True
    """Add softplus(x·W_n)-scaled Gaussian noise to the router logits in training (never in eval)."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or 'all-linear' (every linear layer but the output head)."""
    aux_loss_coef: float = 0.0
    """Weight of the Switch-style load-balancing loss (0 = off: no router statistics are kept)."""
    universal: bool = True
    """Whether the layers hold the universal expert; false in an exported experts adapter, whose universal
    expert lives in its base weights."""

    def __post_init__(self) -> None:
        problems = _settings_problems(self)
        if problems:
            raise ValueError("invalid MoLE settings: " + "; ".join(problems))


def _settings_problems(s: MoleSettings) -> list[str]:
    problems = []
    if not isinstance(s.r, int) or s.r < 1:
        problems.append(f"r must be an integer >= 1, got {s.r!r}")
    if not isinstance(s.alpha, (int, float)) or s.alpha <= 0:
        problems.append(f"alpha must be > 0, got {s.alpha!r}")
    if not isinstance(s.dropout, (int, float)) or not 0.0 <= s.dropout < 1.0:
        problems.append(f"dropout must be within 0..1 (1 excluded), got {s.dropout!r}")
    if not isinstance(s.num_experts, int) or s.num_experts < 1:
        problems.append(f"num_experts must be an integer >= 1, got {s.num_experts!r}")
    elif s.top_k is not None and (not isinstance(s.top_k, int) or not 1 <= s.top_k <= s.num_experts):
        problems.append(f"top_k must be None (dense) or an integer within 1..num_experts={s.num_experts}, "
                        f"got {s.top_k!r}")
    if not isinstance(s.aux_loss_coef, (int, float)) or s.aux_loss_coef < 0:
        problems.append(f"aux_loss_coef must be >= 0, got {s.aux_loss_coef!r}")
    targets = s.target_modules
    if isinstance(targets, str):
        if not targets:
            problems.append("target_modules must not be empty")
    elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        problems.append(f"target_modules must be a module name, a non-empty list of names, or 'all-linear', "
                        f"got {targets!r}")
    return problems


class MoleLoadError(RuntimeError):
    """A MoLE adapter folder does not match what its configs describe (keys, shapes or settings)."""


# ----------------------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------------------
def _in_backward() -> bool:
    """True while autograd runs a backward pass: a forward then is a gradient-checkpointing recompute, whose
    router statistics must not replace the first forward's (they would keep the recompute's tensors alive)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class MoleLinear(nn.Module, LoraLayer):
    """A linear layer with a universal LoRA expert, T routed LoRA experts and a noisy softmax router.

    Built by peft through `LoraConfig._register_custom_module({nn.Linear: partial(MoleLinear, mole=settings)})`;
    peft passes the base layer, adapter name, config, r and lora_alpha.
    """

    # Listing the new containers here makes peft treat them as adapter weights: trainable with the adapter,
    # frozen when it is disabled, moved to the base layer's device, deleted with the adapter.
    adapter_layer_names = LoraLayer.adapter_layer_names + (
        "lora_experts_A", "lora_experts_B", "lora_router", "lora_noise")
    other_param_names = LoraLayer.other_param_names + ("mole_settings",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, r: int = 0, lora_alpha: int = 1,
                 *, mole: MoleSettings, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        if not isinstance(self.get_base_layer(), nn.Linear):
            raise TypeError(f"MoLE adapts nn.Linear layers only, got {type(self.get_base_layer()).__name__}")
        if config.fan_in_fan_out:
            raise ValueError("MoLE does not support fan_in_fan_out (it adapts nn.Linear, whose weight is [out, in])")
        self.fan_in_fan_out = False
        self.lora_experts_A = nn.ModuleDict({})
        self.lora_experts_B = nn.ModuleDict({})
        self.lora_router = nn.ModuleDict({})
        self.lora_noise = nn.ModuleDict({})
        self.mole_settings: dict[str, MoleSettings] = {}
        # Per-rank, per-forward observations; nothing here has to agree across ranks.
        self._recording_depth = 0
        self._last_gates: dict[str, torch.Tensor] = {}  # detached, only while recording
        self._router_probs: dict[str, torch.Tensor] = {}  # with graph, only in training with aux_loss_coef > 0
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config, mole=mole, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any,
                     mole: MoleSettings | None = None, **kwargs: Any) -> None:
        if mole is None:
            raise ValueError("a MoLE layer holds one adapter, built by rlmed.models.mole (wrap/load)")
        if r != mole.r or lora_alpha != mole.alpha:
            raise ValueError(f"per-layer rank/alpha patterns are not supported: got r={r}, alpha={lora_alpha} "
                             f"for MoLE settings r={mole.r}, alpha={mole.alpha}")
        self._add_modules(adapter_name, r, lora_alpha, config.lora_dropout, mole)
        self._init_weights(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        # New modules start in training mode; follow the model's mode instead, or a model loaded for inference
        # would get dropout and router noise.
        self.train(self.get_base_layer().training)

    def _add_modules(self, adapter: str, r: int, alpha: float, dropout: float, mole: MoleSettings) -> None:
        n_in, n_out, n_experts = self.in_features, self.out_features, mole.num_experts
        self.r[adapter] = r
        self.lora_alpha[adapter] = alpha
        self.scaling[adapter] = alpha / r
        self.use_rslora[adapter] = False
        self.use_dora[adapter] = False
        self.lora_bias[adapter] = False
        self.lora_dropout[adapter] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        if mole.universal:
            self.lora_A[adapter] = nn.Linear(n_in, r, bias=False)
            self.lora_B[adapter] = nn.Linear(r, n_out, bias=False)
        # Stacked, so all experts take one matmul each for A and B (see _routed_delta).
        self.lora_experts_A[adapter] = nn.Linear(n_in, n_experts * r, bias=False)
        self.lora_experts_B[adapter] = nn.Linear(n_experts * r, n_out, bias=False)
        self.lora_router[adapter] = nn.Linear(n_in, n_experts, bias=False)
        if mole.noisy_gating:
            self.lora_noise[adapter] = nn.Linear(n_in, n_experts, bias=False)
        self.mole_settings[adapter] = mole

    @torch.no_grad()
    def _init_weights(self, adapter: str) -> None:
        # A as in LoRA, B zero: a fresh adapter is an exact no-op. W_g and W_n zero (as Shazeer et al.'s noisy
        # top-k gating): routing starts uniform, explored by the noise until the router learns.
        for a_proj in (self.lora_A, self.lora_experts_A):
            if adapter in a_proj:
                nn.init.kaiming_uniform_(a_proj[adapter].weight, a=math.sqrt(5))
        for zero_init in (self.lora_B, self.lora_experts_B, self.lora_router, self.lora_noise):
            if adapter in zero_init:
                nn.init.zeros_(zero_init[adapter].weight)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("MoLE layers do not support mixed adapter batches (adapter_names)")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for adapter in self.active_adapters:
            if adapter in self.lora_router:
                result = result + self._adapter_delta(adapter, x).to(result.dtype)
        return result

    def _adapter_delta(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        x = self._cast_input_dtype(x, self.lora_router[adapter].weight.dtype)
        gates = self._route(adapter, x)
        x_experts = self.lora_dropout[adapter](x)
        delta = self._routed_delta(adapter, x_experts, gates)
        if adapter in self.lora_A:  # the universal expert, weight 1
            delta = delta + self.lora_B[adapter](self.lora_A[adapter](x_experts))
        return delta * self.scaling[adapter]

    def _route(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """Gates [..., T]: softmax of the (noisy, in training) router logits, top-k sparsified if asked."""
        settings = self.mole_settings[adapter]
        # Float32 routing: a softmax over bf16 logits would make near-tied experts flip between steps.
        logits = self.lora_router[adapter](x).float()
        if self.training and settings.noisy_gating:
            noise_scale = F.softplus(self.lora_noise[adapter](x).float())
            logits = logits + torch.randn_like(logits) * noise_scale
        probs = torch.softmax(logits, dim=-1)
        gates = _top_k(probs, settings.top_k)
        self._observe(adapter, settings, probs, gates)
        return gates

    def _routed_delta(self, adapter: str, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        # Σ_j g_j B_j A_j x = B_stacked · concat_j(g_j · A_j x): scaling the rank-r codes keeps the intermediate
        # at [tokens, T·r] instead of [tokens, T, out]. Zero gates (top-k) still go through the matmuls, so every
        # parameter is in every step's graph (DDP needs that) and the output equals skipping those experts.
        settings = self.mole_settings[adapter]
        codes = self.lora_experts_A[adapter](x).unflatten(-1, (settings.num_experts, settings.r))
        codes = (codes * gates.unsqueeze(-1).to(codes.dtype)).flatten(-2)
        return self.lora_experts_B[adapter](codes)

    def _observe(self, adapter: str, settings: MoleSettings, probs: torch.Tensor, gates: torch.Tensor) -> None:
        if _in_backward():
            return
        if self.training and settings.aux_loss_coef > 0:
            self._router_probs[adapter] = probs
        else:
            # Off (eval, or no loss asked for): keep no graph alive between forwards.
            self._router_probs.pop(adapter, None)
        if self._recording_depth > 0:
            self._last_gates[adapter] = gates.detach()

    # -- merging -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge_universal(self) -> None:
        """Fold the universal expert into the base weight and remove it (the routed experts depend on the token,
        so they cannot be folded)."""
        base = self.get_base_layer()
        for adapter in list(self.lora_A.keys()):
            delta = self.lora_B[adapter].weight.float() @ self.lora_A[adapter].weight.float()
            base.weight.data += (delta * self.scaling[adapter]).to(base.weight.dtype)
            del self.lora_A[adapter]
            del self.lora_B[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError("routed MoLE experts cannot be merged into the base weights; "
                                  "use rlmed.models.mole.merge_universal or export")

    def unmerge(self) -> None:
        raise NotImplementedError("MoLE layers are never merged")

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise NotImplementedError("a MoLE layer's update depends on the token; it has no single delta weight")

    def __repr__(self) -> str:
        return "mole." + super().__repr__()


def _top_k(probs: torch.Tensor, k: int | None) -> torch.Tensor:
    """The k largest gates renormalised to sum 1, the others exactly 0 (probs unchanged for dense routing)."""
    if k is None or k >= probs.shape[-1]:
        return probs
    values, indices = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, indices, values / values.sum(dim=-1, keepdim=True))


# ----------------------------------------------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------------------------------------------
def _peft_model(model: Any) -> Any:
    """The PeftModel inside `model` (DeepSpeed engines and DDP wrap it as `.module`)."""
    from peft import PeftModel

    while not isinstance(model, PeftModel):
        if not hasattr(model, "module"):
            raise TypeError(f"expected a MoLE PeftModel (from rlmed.models.mole.wrap/load), got {type(model)}")
        model = model.module
    return model


def _layer_name(module_name: str) -> str:
    """The adapted layer's name in the base model (wrappers' prefixes removed)."""
    return module_name.split(_PEFT_PREFIX, 1)[-1]


def _layers(model: nn.Module) -> list[tuple[str, MoleLinear]]:
    return [(_layer_name(n), m) for n, m in model.named_modules() if isinstance(m, MoleLinear)]


def _mole_layers(model: nn.Module) -> list[tuple[str, MoleLinear]]:
    layers = _layers(model)
    if not layers:
        raise ValueError("the model has no MoLE layers (wrap it with rlmed.models.mole.wrap or load it with load)")
    return layers


def _current_settings(model: nn.Module) -> MoleSettings:
    """The settings the layers were built with; `universal` says whether they still hold the universal expert."""
    layers = [layer for _, layer in _mole_layers(model)]
    settings = next(iter(layers[0].mole_settings.values()))
    has_universal = {bool(layer.lora_A) for layer in layers}
    if len(has_universal) != 1:
        raise ValueError("some MoLE layers hold the universal expert and some do not")
    return replace(settings, universal=has_universal.pop())


def _register(config: Any, settings: MoleSettings) -> Any:
    # The registration lives on the config object only (it is not serialised), so every load registers again.
    config._register_custom_module({nn.Linear: functools.partial(MoleLinear, mole=settings)})
    return config


def lora_config(settings: MoleSettings, task_type: str = "CAUSAL_LM") -> Any:
    """The peft LoraConfig that builds MoLE layers for `settings`."""
    from peft import LoraConfig

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type=task_type, bias="none")
    return _register(config, settings)


def _check_only_mole_layers(model: nn.Module) -> None:
    # A target that is not an nn.Linear (e.g. GPT-2's Conv1D) would get peft's plain LoRA layer: refuse that.
    other = [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and not isinstance(m, MoleLinear)]
    if other:
        raise ValueError(f"MoLE adapts nn.Linear only; these targets are not: {_listed(other)}")
    _mole_layers(model)


def wrap(model: Any, settings: MoleSettings) -> Any:
    """`model` with MoLE layers: experts, router (W_g) and noise (W_n) trainable, base weights frozen."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(settings))
    _check_only_mole_layers(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("MoLE r=%d alpha=%s, 1 universal + %d experts (top_k=%s, noisy=%s) on %d layers: %d of %d "
                "parameters trainable (%.2f%%)", settings.r, settings.alpha, settings.num_experts, settings.top_k,
                settings.noisy_gating, len(_layers(peft_model)), trainable, total,
                100.0 * trainable / max(total, 1))
    return peft_model


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------
def save_settings(settings: MoleSettings, out_dir: str | Path) -> None:
    path = Path(out_dir) / MOLE_CONFIG
    path.write_text(json.dumps(asdict(settings), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save(model: Any, out_dir: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None,
         base_model: str | None = None) -> None:
    """Write peft's adapter files (every expert, router and noise weight) and mole_config.json.

    `state_dict`: the full model state dict gathered under ZeRO-3 (as the Trainer passes it to save_pretrained).
    `base_model`: the base recorded in adapter_config.json; required once the universal expert was merged into
    the in-memory base (the saved adapter then only fits that merged model, as in `export`).
    """
    peft_model = _peft_model(model)
    settings = _current_settings(peft_model)
    first_layer = _mole_layers(peft_model)[0][1]
    was_merged = next(iter(first_layer.mole_settings.values())).universal and not settings.universal
    if was_merged and base_model is None:
        raise ValueError("the universal expert was merged into the base weights: pass base_model= the folder of "
                         "that merged model (export does), or the adapter would be applied to the unmerged base")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = peft_model.peft_config[peft_model.active_adapter]
    recorded_base = config.base_model_name_or_path
    if base_model is not None:
        config.base_model_name_or_path = base_model
    try:
        peft_model.save_pretrained(str(out), state_dict=state_dict, save_embedding_layers=False)
    finally:
        config.base_model_name_or_path = recorded_base
    save_settings(settings, out)
    _check_saved_router(peft_model, settings, out)


def _check_saved_router(model: nn.Module, settings: MoleSettings, out: Path) -> None:
    """Fail at save time, not at load time, if peft's filtering ever drops router or noise weights."""
    from safetensors import safe_open

    with safe_open(str(out / ADAPTER_WEIGHTS), framework="pt") as handle:
        saved = set(handle.keys())
    wanted = [f"{_PEFT_PREFIX}{name}.{kind}.weight" for name, _ in _layers(model)
              for kind in ("lora_router", "lora_experts_A", "lora_experts_B")
              + (("lora_noise",) if settings.noisy_gating else ())]
    missing = [key for key in wanted if key not in saved]
    if missing:
        raise RuntimeError(f"peft left MoLE weights out of {out / ADAPTER_WEIGHTS}: {_listed(missing)}")


def read_settings(adapter_dir: str | Path) -> MoleSettings:
    """The MoleSettings in `adapter_dir/mole_config.json` (MoleLoadError naming the bad fields)."""
    path = Path(adapter_dir) / MOLE_CONFIG
    if not path.is_file():
        raise MoleLoadError(f"{path} not found: not a MoLE adapter folder (plain LoRA folders load with "
                            "rlmed.models.lora)")
    data = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(MoleSettings)}
    unknown, missing = sorted(set(data) - known), sorted(known - set(data))
    if unknown or missing:
        raise MoleLoadError(f"{path}: unknown fields {unknown}, missing fields {missing}")
    try:
        return MoleSettings(**data)
    except ValueError as err:
        raise MoleLoadError(f"{path}: {err}") from err


def _read_lora_config(adapter_dir: Path) -> Any:
    from peft import LoraConfig, PeftType

    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise MoleLoadError(f"{adapter_dir / ADAPTER_CONFIG} not found")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    if config.peft_type != PeftType.LORA:
        raise MoleLoadError(f"{adapter_dir / ADAPTER_CONFIG}: peft_type {config.peft_type}, expected LORA")
    return config


def _config_mismatches(settings: MoleSettings, config: Any) -> list[str]:
    """Fields where mole_config.json and adapter_config.json disagree."""
    pairs = [("r", settings.r, config.r), ("alpha", settings.alpha, config.lora_alpha),
             ("dropout", settings.dropout, config.lora_dropout)]
    problems = [f"{name}: mole_config.json {mine!r}, adapter_config.json {theirs!r}"
                for name, mine, theirs in pairs if mine != theirs]
    # peft records 'all-linear' expanded to the names it found, so only explicit names can be compared.
    if settings.target_modules != "all-linear":
        mine = {settings.target_modules} if isinstance(settings.target_modules, str) else set(settings.target_modules)
        theirs = {config.target_modules} if isinstance(config.target_modules, str) else set(config.target_modules)
        if mine != theirs:
            problems.append(f"target_modules: mole_config.json {sorted(mine)}, adapter_config.json {sorted(theirs)}")
    for name in ("rank_pattern", "alpha_pattern"):
        if getattr(config, name, None):
            problems.append(f"{name}: not supported by MoLE, adapter_config.json has {getattr(config, name)}")
    if config.use_dora or config.fan_in_fan_out:
        problems.append("use_dora / fan_in_fan_out: not supported by MoLE")
    return problems


def _configs(adapter_dir: Path) -> tuple[MoleSettings, Any]:
    """mole_config.json and adapter_config.json, checked against each other; the LoraConfig builds MoLE layers."""
    settings = read_settings(adapter_dir)
    config = _read_lora_config(adapter_dir)
    problems = _config_mismatches(settings, config)
    if problems:
        raise MoleLoadError(f"{adapter_dir}: settings mismatch: " + "; ".join(problems))
    return settings, _register(config, settings)


def peft_config(adapter_dir: str | Path) -> Any:
    """adapter_dir's LoraConfig with the MoLE layer registered, for `PeftModel.from_pretrained(..., config=)`."""
    return _configs(Path(adapter_dir))[1]


def _read_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise MoleLoadError(f"{path} not found")
    return load_file(str(path))


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _weight_problems(expected: dict[str, torch.Size], found: dict[str, torch.Tensor],
                     settings: MoleSettings) -> list[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append("shape mismatch (file vs settings): " + _listed(
            [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k])}" for k in mismatched]))
    problems += _settings_hints(found, settings)
    return problems


def _settings_hints(found: dict[str, torch.Tensor], settings: MoleSettings) -> list[str]:
    """Name the settings field a shape or key mismatch comes from."""
    hints = []
    routers = [t for k, t in found.items() if k.endswith(".lora_router.weight")]
    if routers and routers[0].shape[0] != settings.num_experts:
        hints.append(f"num_experts: mole_config.json says {settings.num_experts}, "
                     f"the weights hold {routers[0].shape[0]} experts")
    has_noise = any(k.endswith(".lora_noise.weight") for k in found)
    if found and has_noise != settings.noisy_gating:
        hints.append(f"noisy_gating: mole_config.json says {settings.noisy_gating}, the weights "
                     f"{'hold' if has_noise else 'lack'} noise (W_n) weights")
    has_universal = any(k.endswith(".lora_A.weight") for k in found)
    if found and has_universal != settings.universal:
        hints.append(f"universal: mole_config.json says {settings.universal}, the weights "
                     f"{'hold' if has_universal else 'lack'} a universal expert")
    return hints


def _load_base(base: Any, config: Any) -> Any:
    if base is None:
        base = config.base_model_name_or_path
        if not base:
            raise MoleLoadError("adapter_config.json records no base model; pass one")
    if isinstance(base, (str, Path)):
        # Through rlmed's loader: a MoLE stage trained on a LoRA stage's output records that adapter folder (or
        # chain of them) as its base, which plain from_pretrained would load without the LoRA training.
        from rlmed.models.loading import load_causal_lm

        return load_causal_lm(str(base))
    return base


def load(base: Any, adapter_dir: str | Path, *, is_trainable: bool = False) -> Any:
    """`base` (a model, a path or Hub id, or None for the base adapter_config.json records) with the MoLE adapter
    in `adapter_dir`, loaded strictly: missing or unexpected keys, shape mismatches, or mole_config.json
    disagreeing with adapter_config.json raise MoleLoadError naming them. Frozen unless `is_trainable`."""
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    adapter_dir = Path(adapter_dir)
    settings, config = _configs(adapter_dir)
    found = _read_weights(adapter_dir)  # before the base: a broken folder fails fast
    config.inference_mode = not is_trainable
    peft_model = get_peft_model(_load_base(base, config), config)
    expected = {k: v.shape for k, v in
                get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
    problems = _weight_problems(expected, found, settings)
    if problems:
        raise MoleLoadError(f"{adapter_dir / ADAPTER_WEIGHTS} does not match {MOLE_CONFIG}: " + "; ".join(problems))
    result = set_peft_model_state_dict(peft_model, found)
    if result.unexpected_keys:  # cannot happen after the check above; a guard against peft remapping changes
        raise MoleLoadError(f"peft did not place {_listed(sorted(result.unexpected_keys))}")
    return peft_model


# ----------------------------------------------------------------------------------------------------------------
# Routing statistics
# ----------------------------------------------------------------------------------------------------------------
def _token_rows(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[..., T] -> [tokens, T], keeping the tokens where `mask` (shaped like values' leading dims) is set."""
    if mask is None:
        return values.reshape(-1, values.shape[-1])
    if tuple(mask.shape) != tuple(values.shape[:-1]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the layer's tokens {tuple(values.shape[:-1])}")
    return values[mask.to(device=values.device, dtype=torch.bool)]


def _switch_loss(probs: torch.Tensor) -> torch.Tensor:
    """T · Σ_j f_j · P_j: f_j the fraction of tokens whose top-1 expert is j, P_j the mean router probability of
    j. 1 when balanced, T when one expert takes every token; the gradient flows through P only."""
    n_experts = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    top1_share = F.one_hot(probs.argmax(dim=-1), n_experts).to(probs.dtype).mean(dim=0)
    return n_experts * (top1_share * probs.mean(dim=0)).sum()


def aux_loss(model: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The load-balancing loss of the last training forward, summed over layers (unweighted: the caller adds
    `aux_loss_coef * aux_loss(model)`). A 0 tensor when aux_loss_coef is 0 or the last forward was in eval.
    `mask` ([batch, length], e.g. the attention mask) keeps padding out of the statistics."""
    terms = [_switch_loss(_token_rows(probs, mask))
             for _, layer in _layers(model) for probs in layer._router_probs.values()]
    if not terms:
        return torch.zeros((), device=next(model.parameters()).device)
    total = torch.stack(terms).sum()
    if torch.is_grad_enabled() and not total.requires_grad:
        raise RuntimeError("the MoLE load-balancing loss has no gradient: the forward ran without grad (reentrant "
                           "gradient checkpointing does that; use gradient_checkpointing_kwargs "
                           "{'use_reentrant': False})")
    return total


@contextlib.contextmanager
def recording(model: Any) -> Iterator[None]:
    """While inside, every MoLE layer keeps its last forward's gates (detached); they are dropped on exit."""
    layers = [layer for _, layer in _mole_layers(model)]
    for layer in layers:
        layer._recording_depth += 1
    try:
        yield
    finally:
        for layer in layers:
            layer._recording_depth -= 1
            if layer._recording_depth == 0:
                layer._last_gates.clear()


def last_gates(model: Any, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Layer name -> gates [tokens, T] of the last forward inside `recording(model)`. With `mask` ([batch,
    length], e.g. the attention mask) only the masked-in tokens are kept."""
    gates = {}
    for name, layer in _mole_layers(model):
        for values in layer._last_gates.values():
            gates[name] = _token_rows(values, mask)
    if not gates:
        raise RuntimeError("no gates recorded: run a forward inside `with mole.recording(model):` and read them there")
    return gates


# ----------------------------------------------------------------------------------------------------------------
# Merging and serving
# ----------------------------------------------------------------------------------------------------------------
def merge_universal(model: Any) -> None:
    """Fold every layer's universal expert into its base weight (in place) and remove it; the routed experts stay.
    Logits are unchanged up to float rounding. Needs unpartitioned weights (not inside ZeRO-3)."""
    for _, layer in _mole_layers(model):
        layer.merge_universal()


def _tokenizer_source(adapter_dir: Path, base: Any) -> Path | None:
    for folder in (adapter_dir, base):
        if isinstance(folder, (str, Path)) and (Path(folder) / "tokenizer_config.json").is_file():
            return Path(folder)
    return None


def export(adapter_dir: str | Path, out_dir: str | Path, *, base: Any = None) -> None:
    """Write a serving folder: `out_dir/` the base with the universal expert merged (a full transformers model,
    with the tokenizer of the adapter folder, else of a local base folder), `out_dir/experts/` an adapter with the
    routed experts, router and noise only. `base` defaults to the one adapter_config.json records."""
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if base is None:
        base = _read_lora_config(adapter_dir).base_model_name_or_path
    model = load(base, adapter_dir)
    merge_universal(model)
    save(model, out / EXPERTS_SUBDIR, base_model=str(out.resolve()))
    model.unload().save_pretrained(str(out))  # the tuner layers replaced by their (merged) base layers
    source = _tokenizer_source(adapter_dir, base)
    if source is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    logger.info("MoLE serving folder written to %s (experts adapter in %s/)", out, EXPERTS_SUBDIR)


def load_exported(out_dir: str | Path, *, is_trainable: bool = False) -> Any:
    """The model of an `export` folder: its merged base with the experts adapter."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    # The root is a full model by construction; rlmed's loader would see the export in it and load the experts.
    return load(AutoModelForCausalLM.from_pretrained(str(out)), out / EXPERTS_SUBDIR, is_trainable=is_trainable)
