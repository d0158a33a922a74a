"""rlmed.models.mole: the MoLE layer (universal + routed LoRA experts) on a tiny Qwen2 model.

One model is trained for a few steps per module (`trained`) and saved once (`saved_dir`); the tests that need a
fresh adapter build their own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlmed.models import mole

VOCAB = 2048
SETTINGS = mole.MoleSettings(r=4, alpha=8, num_experts=3, aux_loss_coef=0.01)


def _base(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _tokens(seed: int, shape: tuple[int, int] = (2, 12)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _adapted_names(base) -> list[str]:
    """What 'all-linear' adapts: every nn.Linear but the output head."""
    return [n for n, m in base.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]


def _layers(model) -> dict[str, mole.MoleLinear]:
    return {n.split("base_model.model.", 1)[-1]: m for n, m in model.named_modules()
            if isinstance(m, mole.MoleLinear)}


def _expert_slices(layer: mole.MoleLinear, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One entry per trainable piece of a layer: each expert's A and B separately, universal A/B, W_g, W_n."""
    r, n_experts = layer.r["default"], layer.mole_settings["default"].num_experts
    pieces = {"universal_A": tensors["lora_A"], "universal_B": tensors["lora_B"],
              "router": tensors["lora_router"], "noise": tensors["lora_noise"]}
    for j in range(n_experts):
        pieces[f"expert{j}_A"] = tensors["lora_experts_A"][j * r:(j + 1) * r]
        pieces[f"expert{j}_B"] = tensors["lora_experts_B"][:, j * r:(j + 1) * r]
    return pieces


def _weights(layer: mole.MoleLinear) -> dict[str, torch.Tensor]:
    names = ("lora_A", "lora_B", "lora_experts_A", "lora_experts_B", "lora_router", "lora_noise")
    return {n: getattr(layer, n)["default"].weight for n in names}


@pytest.fixture(scope="module")
def trained(tiny_model):
    """A MoLE model after 4 AdamW steps on random tokens, with its starting weights and the gradients seen."""
    torch.manual_seed(0)
    model = mole.wrap(_base(tiny_model), SETTINGS)
    model.train()
    layers = _layers(model)
    initial = {name: {k: w.detach().clone() for k, w in _weights(layer).items()} for name, layer in layers.items()}
    grad_seen = {name: {k: torch.zeros_like(w) for k, w in _weights(layer).items()}
                 for name, layer in layers.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(4):
        ids = _tokens(100 + step, (4, 16))
        loss = model(input_ids=ids, labels=ids).loss + SETTINGS.aux_loss_coef * mole.aux_loss(model)
        loss.backward()
        for name, layer in layers.items():
            for k, w in _weights(layer).items():
                grad_seen[name][k] += w.grad.abs()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, initial, grad_seen


@pytest.fixture(scope="module")
def saved_dir(trained, tiny_model, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("mole") / "adapter"
    mole.save(trained[0], out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)  # as a stage writes its model folder
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- settings --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, field", [
    ({"r": 0}, "r"), ({"num_experts": 0}, "num_experts"), ({"top_k": 0}, "top_k"), ({"top_k": 4}, "top_k"),
    ({"dropout": 1.0}, "dropout"), ({"aux_loss_coef": -0.1}, "aux_loss_coef"), ({"target_modules": []},
                                                                                  "target_modules")])
def test_settings_reject_bad_values(bad, field):
    with pytest.raises(ValueError, match=field) as info:
        mole.MoleSettings(**bad)
    assert f"got {bad[field]!r}" in str(info.value)  # the value received, not only the rule


# -- the layer -------------------------------------------------------------------------------------------------
def test_fresh_adapter_is_a_no_op(tiny_model):
    ids = _tokens(1)
    reference = _logits(_base(tiny_model), ids)
    model = mole.wrap(_base(tiny_model), SETTINGS)
    assert set(_layers(model)) == set(_adapted_names(_base(tiny_model)))
    assert torch.equal(_logits(model.eval(), ids), reference)
    # Training mode (noise and dropout on) too: B = 0 makes every expert's update exactly zero.
    assert torch.equal(_logits(model.train(), ids), reference)


def test_training_updates_every_expert_router_and_noise_and_only_them(trained):
    model, initial, grad_seen = trained
    for name, layer in _layers(model).items():
        grads = _expert_slices(layer, grad_seen[name])
        starts = _expert_slices(layer, initial[name])
        now = _expert_slices(layer, {k: w.detach() for k, w in _weights(layer).items()})
        for piece in grads:
            assert grads[piece].abs().sum() > 0, f"{name} {piece} got no gradient"
            assert not torch.equal(now[piece], starts[piece]), f"{name} {piece} did not change"
    frozen = [n for n, p in model.named_parameters() if "base_layer" in n or "lora_" not in n]
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)


def test_noise_is_off_in_eval_and_on_in_training(tiny_model):
    def model_with_live_experts(noisy: bool):
        torch.manual_seed(1)
        model = mole.wrap(_base(tiny_model), mole.MoleSettings(r=4, alpha=8, dropout=0.0, noisy_gating=noisy))
        for layer in _layers(model).values():  # nonzero B and W_n, so the gates reach the logits
            nn.init.normal_(layer.lora_experts_B["default"].weight, std=0.5)
            if noisy:
                nn.init.normal_(layer.lora_noise["default"].weight, std=0.5)
        return model

    ids = _tokens(2)
    noisy = model_with_live_experts(noisy=True)
    assert torch.equal(_logits(noisy.eval(), ids), _logits(noisy.eval(), ids))
    noisy.train()
    assert not torch.equal(_logits(noisy, ids), _logits(noisy, ids))
    # The control: without noisy gating (and with no dropout) training-mode passes are deterministic, so the
    # difference above comes from the router noise.
    quiet = model_with_live_experts(noisy=False).train()
    assert torch.equal(_logits(quiet, ids), _logits(quiet, ids))
    assert not any("lora_noise" in n for n, _ in quiet.named_parameters())


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_keeps_k_gates_per_token_summing_to_one(tiny_model, k):
    torch.manual_seed(3)
    model = mole.wrap(_base(tiny_model), mole.MoleSettings(r=4, num_experts=3, top_k=k)).train()
    with mole.recording(model):
        model(input_ids=_tokens(3))
        gates = mole.last_gates(model)
    for name, g in gates.items():
        assert ((g > 0).sum(dim=-1) == k).all(), name
        assert torch.allclose(g.sum(dim=-1), torch.ones(g.shape[0]), atol=1e-6), name
    if k == 1:
        assert all(torch.equal(g.max(dim=-1).values, torch.ones(g.shape[0])) for g in gates.values())


def test_dense_gates_are_all_positive_and_sum_to_one(trained):
    model = trained[0]
    with mole.recording(model):
        model(input_ids=_tokens(4))
        gates = mole.last_gates(model)
    for name, g in gates.items():
        assert (g > 0).all(), name
        assert torch.allclose(g.sum(dim=-1), torch.ones(g.shape[0]), atol=1e-6), name
    # Trained routers no longer route uniformly (the zero-initialised router learned something).
    assert any(g.std() > 1e-4 for g in gates.values())


def _switch_loss_by_hand(gates: torch.Tensor) -> torch.Tensor:
    n_experts = gates.shape[-1]
    top1_share = torch.bincount(gates.argmax(dim=-1), minlength=n_experts).float() / gates.shape[0]
    return n_experts * (top1_share * gates.mean(dim=0)).sum()


def test_aux_loss_is_a_positive_scalar_with_grad_matching_the_switch_formula(tiny_model):
    torch.manual_seed(5)
    model = mole.wrap(_base(tiny_model), mole.MoleSettings(r=4, num_experts=3, aux_loss_coef=0.01)).train()
    ids = _tokens(5)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: kept out of the statistics
    with mole.recording(model):
        model(input_ids=ids)
        gates = mole.last_gates(model, mask)  # dense routing: the gates are the router probabilities
    loss = mole.aux_loss(model, mask)
    assert loss.ndim == 0 and loss.item() > 0 and loss.requires_grad
    expected = sum(_switch_loss_by_hand(g) for g in gates.values())
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    loss.backward()
    router = next(iter(_layers(model).values())).lora_router["default"].weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    # Off: in eval, and with aux_loss_coef 0, the loss is a constant 0 and nothing with a graph is kept.
    model.eval()
    model(input_ids=ids)
    assert mole.aux_loss(model).item() == 0.0
    off = mole.wrap(_base(tiny_model), mole.MoleSettings(r=4)).train()
    off(input_ids=ids)
    zero = mole.aux_loss(off)
    assert zero.item() == 0.0 and not zero.requires_grad


def test_recording_returns_token_gates_per_layer_and_forgets_them_after(trained, tiny_model):
    model = trained[0]
    ids = _tokens(6)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    with mole.recording(model):
        model(input_ids=ids)
        gates = mole.last_gates(model)
        masked = mole.last_gates(model, mask)
    assert set(gates) == set(_adapted_names(_base(tiny_model)))
    assert all(g.shape == (ids.numel(), SETTINGS.num_experts) and not g.requires_grad for g in gates.values())
    assert all(g.shape == (int(mask.sum()), SETTINGS.num_experts) for g in masked.values())
    with pytest.raises(RuntimeError, match="no gates recorded"):
        mole.last_gates(model)
    model(input_ids=ids)  # outside recording nothing is kept
    assert all(not layer._last_gates for layer in _layers(model).values())


def test_gradient_checkpointing_gives_the_same_gradients_and_aux_loss(tiny_model):
    def grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        torch.manual_seed(7)
        model = mole.wrap(_base(tiny_model), mole.MoleSettings(r=4, aux_loss_coef=0.01))
        for layer in _layers(model).values():
            nn.init.normal_(layer.lora_experts_B["default"].weight, std=0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        torch.manual_seed(8)  # the same noise and dropout draws in both runs; checkpointing replays them
        ids = _tokens(8)
        loss = model(input_ids=ids, labels=ids).loss
        aux = mole.aux_loss(model)
        stored = {n: layer._router_probs["default"] for n, layer in _layers(model).items()}
        (loss + 0.01 * aux).backward()
        # The recompute inside backward must not replace the first forward's statistics (it would keep the
        # recompute's tensors alive until the next forward).
        assert all(layer._router_probs["default"] is stored[n] for n, layer in _layers(model).items())
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, aux.detach()

    plain, plain_aux = grads(checkpointing=False)
    checkpointed, checkpointed_aux = grads(checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    assert torch.allclose(plain_aux, checkpointed_aux)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


# -- saving and loading ----------------------------------------------------------------------------------------
def test_save_load_reproduces_logits_exactly(trained, saved_dir, tiny_model):
    ids = _tokens(9)
    loaded = mole.load(tiny_model, saved_dir)
    assert (_logits(loaded, ids) - _logits(trained[0], ids)).abs().max().item() == 0.0
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference unless asked
    trainable = mole.load(tiny_model, saved_dir, is_trainable=True)
    assert any("lora_noise" in n for n, p in trainable.named_parameters() if p.requires_grad)


def test_saved_file_holds_router_and_noise_of_every_layer(trained, saved_dir, tiny_model):
    saved = load_file(str(saved_dir / "adapter_model.safetensors"))
    assert json.loads((saved_dir / "mole_config.json").read_text()) == asdict(SETTINGS)
    for name, layer in _layers(trained[0]).items():
        for kind in ("lora_router", "lora_noise", "lora_experts_A", "lora_experts_B", "lora_A", "lora_B"):
            key = f"base_model.model.{name}.{kind}.weight"
            assert key in saved, key
            assert torch.equal(saved[key], getattr(layer, kind)["default"].weight.detach()), key
    assert len(_layers(trained[0])) == len(_adapted_names(_base(tiny_model)))


def test_load_rejects_num_experts_disagreeing_with_the_weights(saved_dir, tmp_path, tiny_model):
    folder = _copy(saved_dir, tmp_path / "adapter")
    config = json.loads((folder / "mole_config.json").read_text())
    (folder / "mole_config.json").write_text(json.dumps({**config, "num_experts": 2}))
    with pytest.raises(mole.MoleLoadError, match=r"num_experts: mole_config.json says 2, the weights hold 3") as err:
        mole.load(tiny_model, folder)
    assert "shape mismatch" in str(err.value) and "lora_router.weight" in str(err.value)


def test_load_rejects_a_missing_router_key(saved_dir, tmp_path, tiny_model):
    folder = _copy(saved_dir, tmp_path / "adapter")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    dropped = "base_model.model.model.layers.1.mlp.down_proj.lora_router.weight"
    del weights[dropped]
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(mole.MoleLoadError, match="missing keys: " + dropped.replace(".", r"\.")):
        mole.load(tiny_model, folder)


def test_load_rejects_an_unexpected_key(saved_dir, tmp_path, tiny_model):
    folder = _copy(saved_dir, tmp_path / "adapter")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.model.layers.0.mlp.up_proj.lora_extra.weight"] = torch.zeros(2)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(mole.MoleLoadError, match=r"unexpected keys: .*up_proj\.lora_extra\.weight"):
        mole.load(tiny_model, folder)


@pytest.mark.parametrize("file, change, message", [
    ("adapter_config.json", {"r": 8}, r"r: mole_config.json 4, adapter_config.json 8"),
    ("adapter_config.json", {"lora_alpha": 4}, r"alpha: mole_config.json 8, adapter_config.json 4"),
    ("mole_config.json", {"noisy_gating": False}, r"noisy_gating: mole_config.json says False"),
    ("mole_config.json", {"experts": 3}, r"unknown fields \['experts'\]"),
])
def test_load_rejects_settings_mismatches(saved_dir, tmp_path, tiny_model, file, change, message):
    folder = _copy(saved_dir, tmp_path / "adapter")
    data = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**data, **change}))
    with pytest.raises(mole.MoleLoadError, match=message):
        mole.load(tiny_model, folder)


# -- merging and serving ---------------------------------------------------------------------------------------
def test_merge_universal_keeps_logits_and_removes_the_universal_expert(saved_dir, tiny_model):
    ids = _tokens(10)
    model = mole.load(tiny_model, saved_dir)
    before = _logits(model, ids)
    layer = _layers(model)["model.layers.0.self_attn.q_proj"]
    base_weight = layer.get_base_layer().weight.detach().clone()
    mole.merge_universal(model)
    assert not torch.equal(layer.get_base_layer().weight, base_weight)  # the trained universal expert moved in
    assert not any(".lora_A." in n or ".lora_B." in n for n, _ in model.named_parameters())
    assert (_logits(model, ids) - before).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="base_model="):  # that adapter would only fit the merged base
        mole.save(model, saved_dir.parent / "unsafe")


def test_export_loads_back_with_rlmed_and_with_plain_peft(trained, saved_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "serving"
    mole.export(saved_dir, out)
    ids = _tokens(11)
    reference = _logits(trained[0], ids)

    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    experts = load_file(str(out / "experts" / "adapter_model.safetensors"))
    assert not any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in experts)
    assert any(k.endswith(".lora_noise.weight") for k in experts)
    assert json.loads((out / "experts" / "mole_config.json").read_text())["universal"] is False

    # Not bit-exact: W0 + ΔW_u is rounded once in float32, while the unmerged model rounds W0·x and ΔW_u·x
    # separately (differences around 1e-7).
    rlmed_model = mole.load_exported(out)
    assert (_logits(rlmed_model, ids) - reference).abs().max().item() < 1e-5

    # The documented plain transformers + peft call.
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), f"{out}/experts",
                                      config=mole.peft_config(f"{out}/experts"))
    assert torch.equal(_logits(plain, ids), _logits(rlmed_model, ids))
    assert (_logits(plain, ids) - reference).abs().max().item() < 1e-5
