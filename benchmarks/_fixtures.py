"""Synthetic checkpoints and data for the benchmarks (no network: timm with pretrained=False)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from hessaudit.inputs.models import disable_fused_attention


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A ReLU/BatchNorm/max-pool CNN for 3x32x32 inputs (piecewise linear)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


def small_vit(num_classes: int = 10) -> nn.Module:
    """A small timm ViT (GELU, LayerNorm, attention) for 3x32x32 inputs."""
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=32,
        patch_size=8, depth=4, embed_dim=96, num_heads=3,
    )
    disable_fused_attention(model)  # as the audit does: no double backward through fused SDPA
    return model


def resnet18(num_classes: int = 10) -> nn.Module:
    # zero_init_last=False: live residual branches, as in a trained network.
    return timm.create_model(
        "resnet18", pretrained=False, num_classes=num_classes, zero_init_last=False
    )


def build(name: str, num_classes: int = 10) -> nn.Module:
    return {"small_cnn": small_cnn, "resnet18": resnet18, "vit_small": small_vit}[name](
        num_classes
    )


def batch(n: int, num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def perturbed(model: nn.Module, scale: float = 0.02, seed: int = 1) -> nn.Module:
    """The model with every parameter moved by a relative Gaussian step (a "fine-tuned" copy),
    BatchNorm running statistics made non-trivial, and in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1))
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0, generator=g)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1, generator=g)
        # Spread the logits like a trained classifier's (std ~ 2), so softmax is neither uniform
        # nor saturated and every block Hessian has a non-trivial spectrum.
        model.eval()
        logits = model(batch(64, seed=99)[0].to(next(model.parameters()).device))
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        head.weight.mul_(2.0 / max(float(logits.std()), 1e-6))
    return model.eval()


def write_audit_inputs(root: Path, model_name: str, examples: int = 256,
                       num_classes: int = 10) -> dict[str, str]:
    """pretrained/fine-tuned safetensors and an .npz of ``examples`` 3x32x32 inputs."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build(model_name, num_classes).eval()
    pre = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ft_model = perturbed(model)
    ft = {k: v.detach().clone().contiguous() for k, v in ft_model.state_dict().items()}
    save_file(pre, str(root / f"{model_name}-pre.safetensors"))
    save_file(ft, str(root / f"{model_name}-ft.safetensors"))
    x, y = batch(examples, num_classes)
    np.savez(root / "data.npz", x=x.numpy().astype(np.float32), y=y.numpy().astype(np.int64))
    return {
        "pretrained": str(root / f"{model_name}-pre.safetensors"),
        "finetuned": str(root / f"{model_name}-ft.safetensors"),
        "data": str(root / "data.npz"),
    }
