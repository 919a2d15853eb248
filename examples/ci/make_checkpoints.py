"""Make a pretrained and a fine-tuned checkpoint of the built-in digits CNN, offline.

Pretrain ``hessaudit.zoo:digits_cnn`` on ``digits-pretrain`` (5 classes, label y % 5), then
fine-tune it on ``digits`` (10 classes, so the head is new) for ``--epochs`` epochs. Everything
comes with scikit-learn; nothing is downloaded. Takes a few seconds on a CPU.

    python make_checkpoints.py OUT_DIR [--epochs 3] [--name finetuned]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from hessaudit.inputs.checkpoints import save_checkpoint
from hessaudit.inputs.data import load_data
from hessaudit.zoo import digits_cnn


def train(model: nn.Module, source: str, *, epochs: int, lr: float, seed: int) -> nn.Module:
    data = load_data(source, role="train")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.y), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--name", default="finetuned", help="fine-tuned file name (no suffix)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny model: one thread is the fastest, and the same everywhere

    pretrained_path = args.out / "pretrained.safetensors"
    model = digits_cnn(num_classes=5)
    if pretrained_path.exists():  # reuse it, so that several fine-tunes share one start
        from hessaudit.inputs.checkpoints import load_checkpoint

        model.load_state_dict(load_checkpoint(pretrained_path).tensors)
    else:
        train(model, "digits-pretrain", epochs=10, lr=1e-2, seed=0)
        save_checkpoint(pretrained_path, model.state_dict())

    model.fc = nn.Linear(model.fc.in_features, 10)  # the new task's head
    train(model, "digits", epochs=args.epochs, lr=3e-3, seed=1)
    save_checkpoint(args.out / f"{args.name}.safetensors", model.state_dict())
    print(f"wrote {pretrained_path} and {args.out / (args.name + '.safetensors')}")


if __name__ == "__main__":
    main()
