"""Low-rank adapters (LoRA) on the ``nn.Linear`` layers of a frozen module (``samstudy.finetune``'s
optional image-encoder fine-tuning).

A wrapped layer computes ``y = base(x) + (alpha / rank) * (x A^T) B^T`` with the base layer frozen,
``A (rank, in)`` Kaiming-uniform (nn.Linear's own init rule, from a seeded generator) and
``B (out, rank)`` zeros, so a freshly wrapped module computes exactly what it did before. The update
merges into the base weight, ``W + (alpha / rank) * B @ A`` (:meth:`EncoderLora.merged_weights`), so
the trained model is saved in the base architecture's own format and loads without any LoRA code.

Why not ``peft``: peft 0.21 pulls in transformers, accelerate and tokenizers (six more packages,
transformers imported with it) for what is here ~60 lines; its wrapped layers are renamed
(``base_layer``) just as these are, and its merge rewrites the model in place, while the study needs
the merged tensors beside an untouched training model (checkpoint of the best epoch, then training
goes on).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoraLinear", "EncoderLora", "lora_target_names"]


class LoraLinear(nn.Module):
    """``base(x) + scale * (x @ lora_A.T) @ lora_B.T`` around a frozen ``nn.Linear`` ``base``.

    lora_A: ``(rank, in_features)``, lora_B: ``(out_features, rank)``, both in the base weight's
    dtype and device; ``scale = alpha / rank``. ``generator``: the CPU generator A is drawn from
    (the same numbers on every device).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        w = base.weight
        a = torch.empty(self.rank, base.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(w.device, w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A``: ``(out_features, in_features)``, what merging adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def lora_target_names(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names (sorted) of the ``nn.Linear`` submodules of ``module`` whose dotted name is one of
    ``patterns`` or ends with ``"." + pattern`` (``"attn.qkv"`` matches ``blocks.0.attn.qkv``, not
    ``blocks.0.attn.qkv_x`` nor a ``Conv2d`` called ``proj``)."""
    return sorted(name for name, m in module.named_modules()
                  if isinstance(m, nn.Linear) and any(name == p or name.endswith("." + p) for p in patterns))


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    parent = root
    for part in path:
        parent = getattr(parent, part)
    return parent, attr


class EncoderLora:
    """Adapters on the ``nn.Linear`` layers of ``module`` matching ``patterns`` (:func:`lora_target_names`),
    wrapped **in place** (the layers become :class:`LoraLinear`) until :meth:`remove`.

    The base layers keep their parameters (frozen here); A is drawn layer by layer in name order
    from ``torch.Generator().manual_seed(seed)``. Raises ``ValueError`` when nothing matches.
    """

    def __init__(self, module: nn.Module, patterns: Sequence[str], rank: int, alpha: float, seed: int) -> None:
        names = lora_target_names(module, patterns)
        if not names:
            raise ValueError(f"encoder_lora_targets {list(patterns)} match no nn.Linear layer of the image "
                             f"encoder ({type(module).__name__}); its Linear layers: "
                             f"{_linear_names_hint(module)}")
        self.module = module
        self.patterns, self.rank, self.alpha = tuple(patterns), int(rank), float(alpha)
        g = torch.Generator().manual_seed(int(seed))
        self.layers: dict[str, LoraLinear] = {}
        for name in names:
            parent, attr = _parent(module, name)
            base = getattr(parent, attr)
            base.requires_grad_(False)
            self.layers[name] = LoraLinear(base, rank, alpha, g)
            setattr(parent, attr, self.layers[name])

    def parameters(self) -> list[nn.Parameter]:
        """The adapters' trainable tensors, layer by layer in name order (A, then B)."""
        return [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"<layer>.lora_A": (rank, in), "<layer>.lora_B": (out, rank)}``, detached CPU copies."""
        out = {}
        for name, layer in self.layers.items():
            out[f"{name}.lora_A"] = layer.lora_A.detach().cpu().clone()
            out[f"{name}.lora_B"] = layer.lora_B.detach().cpu().clone()
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a :meth:`state_dict` back in; ``ValueError`` when its names or shapes differ."""
        own = self.state_dict()
        if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
            raise ValueError(f"LoRA state has other layers or shapes ({len(set(own) ^ set(state))} names differ)")
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.lora_A.copy_(state[f"{name}.lora_A"])
                layer.lora_B.copy_(state[f"{name}.lora_B"])

    @torch.no_grad()
    def merged_weights(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix + "<layer>.weight": W + scale * B @ A}`` (CPU, the base weight's dtype, computed in
        float32 at least): the tensors that replace the wrapped layers' weights in a plain model.
        Biases are not adapted (they stay the base file's)."""
        out = {}
        for name, layer in self.layers.items():
            w = layer.base.weight
            acc = torch.promote_types(w.dtype, torch.float32)
            merged = w.to(acc) + (layer.lora_B.to(acc) @ layer.lora_A.to(acc)) * layer.scale
            out[f"{prefix}{name}.weight"] = merged.to(w.dtype).cpu()
        return out

    def remove(self) -> None:
        """Put the base layers back (the module is again the plain architecture); idempotent."""
        for name, layer in self.layers.items():
            parent, attr = _parent(self.module, name)
            if getattr(parent, attr) is layer:
                setattr(parent, attr, layer.base)

    def describe(self) -> dict[str, object]:
        """What ``finetuned.json`` records: rank, alpha, scale, target patterns, wrapped layers, size."""
        return {"rank": self.rank, "alpha": self.alpha, "scale": self.alpha / self.rank,
                "targets": list(self.patterns), "layers": list(self.layers), "parameters": self.n_parameters()}


def _linear_names_hint(module: nn.Module, limit: int = 6) -> str:
    tails = sorted({".".join(n.split(".")[-2:]) for n, m in module.named_modules() if isinstance(m, nn.Linear)})
    if not tails:
        return "none (its attention uses no nn.Linear; LoRA here adapts nn.Linear only)"
    return ", ".join(tails[:limit]) + (" ..." if len(tails) > limit else "")
