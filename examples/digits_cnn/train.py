"""Train a small CNN on scikit-learn's 8x8 digits: an ordinary PyTorch script.

    python examples/digits_cnn/train.py --lr 3e-3 --optimizer adamw --mixup 0.2

Each epoch prints one line of `name=value` pairs on stdout,

    epoch=8 val_accuracy=0.952778 val_loss=0.202823 train_loss=0.160870

and nothing else is printed there. On the CPU a run is deterministic for a given set of arguments
and number of torch threads.
"""

import argparse
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset


class DigitsImages(Dataset):
    """Digit images as 1x8x8 tensors in [0, 1] with their labels.

    `augment` (0 = off, 1 = strongest) is the chance that a sample is shifted by up to one pixel
    each way, and a tenth of it is the standard deviation of the Gaussian noise added to it. The
    random draws come from torch's global generator, so seeding torch makes them repeatable.
    """

    def __init__(self, images, labels, augment=0.0):
        self.images = torch.as_tensor(images, dtype=torch.float32).div(16.0).unsqueeze(1)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.augment > 0:
            image = self.shift_and_noise(image)
        return image, self.labels[index]

    def shift_and_noise(self, image):
        chance, dy, dx = torch.rand(3).tolist()
        if chance < self.augment:
            dy, dx = int(dy * 3) - 1, int(dx * 3) - 1  # each one of -1, 0, 1
            image = F.pad(image, (1, 1, 1, 1))[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
        return image + torch.randn_like(image) * (0.1 * self.augment)


class Net(nn.Module):
    """conv -> relu -> conv -> relu -> 2x2 max-pool -> dropout -> linear, on 1x8x8 images."""

    def __init__(self, kernel_size=3, channels=16, dropout=0.0):
        super().__init__()
        padding = kernel_size // 2  # keeps the 8x8 size for odd kernels
        self.conv1 = nn.Conv2d(1, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size, padding=padding)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * channels * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout(torch.flatten(x, 1))
        return self.fc(x)


def make_loaders(batch_size=64, augment=0.0, seed=0, val_fraction=0.2, split_seed=0):
    """The training and validation loaders: a stratified split drawn with `split_seed` (the same
    images are held out whatever `seed` is, so runs with different seeds are scored alike), and
    training batches shuffled by a generator seeded with `seed`. Only the training images are augmented."""
    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.images, digits.target, test_size=val_fraction, stratify=digits.target, random_state=split_seed
    )
    shuffle = torch.Generator().manual_seed(seed)
    train_set, val_set = DigitsImages(x_train, y_train, augment), DigitsImages(x_val, y_val)
    train_loader = DataLoader(train_set, batch_size, shuffle=True, generator=shuffle, num_workers=0)
    val_loader = DataLoader(val_set, batch_size=512, shuffle=False, num_workers=0)
    return train_loader, val_loader


def make_optimizer(name, params, lr):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: expected sgd, adam or adamw")


def mix(data, target, alpha):
    """Mixup: each image blended with another of the batch by a weight drawn from Beta(alpha, alpha);
    returns the mixed images, the other images' labels and the weight."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(len(target)).to(data.device)
    return lam * data + (1 - lam) * data[perm], target[perm], lam


def train_epoch(model, device, loader, optimizer, mixup=0.0):
    """One pass over the training batches; returns the mean training loss per sample."""
    model.train()
    total, count = 0.0, 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        if mixup > 0:
            data, other, lam = mix(data, target, mixup)
            output = model(data)
            loss = lam * F.cross_entropy(output, target) + (1 - lam) * F.cross_entropy(output, other)
        else:
            loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(target)
        count += len(target)
    return total / count


@torch.no_grad()
def evaluate(model, device, loader):
    """Returns (mean loss, accuracy) over the loader's samples."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        output = model(data)
        total += F.cross_entropy(output, target, reduction="sum").item()
        correct += (output.argmax(1) == target).sum().item()
        count += len(target)
    return total / count, correct / count


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU's generator and every GPU's


def build(args, device):
    """Seeds the generators, then makes the loaders, the model and its optimizer, in that order."""
    seed_everything(args.seed)
    train_loader, val_loader = make_loaders(args.batch_size, args.augment, args.seed, args.val_fraction, args.split_seed)
    model = Net(args.kernel_size, args.channels, args.dropout).to(device)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    return model, optimizer, train_loader, val_loader


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="A small CNN on scikit-learn's 8x8 digits")
    add = parser.add_argument
    add("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    add("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    add("--optimizer", choices=["sgd", "adam", "adamw"], default="adam", help="sgd has momentum 0.9 (default: adam)")
    add("--epochs", type=int, default=8, help="passes over the training images (default: 8)")
    add("--kernel-size", type=int, choices=[3, 5], default=3, help="both convolutions' kernel (default: 3)")
    add("--channels", type=int, default=16, help="first convolution's channels, twice that in the second (default: 16)")
    add("--dropout", type=float, default=0.0, help="dropout before the linear layer (default: 0)")
    add("--mixup", type=float, default=0.0, help="mixup's alpha on the training batches, 0 = off (default: 0)")
    add("--augment", type=float, default=0.0, help="pixel shift / noise strength in [0, 1], 0 = off (default: 0)")
    add("--seed", type=int, default=0, help="seeds shuffling, weights and random draws (default: 0)")
    add("--split-seed", type=int, default=0, help="seeds which images are held out for validation (default: 0)")
    add("--val-fraction", type=float, default=0.2, help="share of the images held out (default: 0.2)")
    add("--device", default="cpu", help="torch device (default: cpu)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    model, optimizer, train_loader, val_loader = build(args, device)
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, device, train_loader, optimizer, args.mixup)
        val_loss, val_accuracy = evaluate(model, device, val_loader)
        print(
            f"epoch={epoch} val_accuracy={val_accuracy:.6f} val_loss={val_loss:.6f} train_loss={train_loss:.6f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
