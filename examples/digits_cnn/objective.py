"""The digits CNN of train.py as a Python objective for tuner:

    tuner study run cnn --space examples/digits_cnn/space.yaml \
        --objective examples.digits_cnn.objective:objective ...

It trains exactly as `python examples/digits_cnn/train.py` does with the same arguments (the same
split, batches, weights and draws), so with as many torch threads a trial's reports match the
script's printed lines.
"""

import torch

try:
    from .train import build, evaluate, parse_args, train_epoch
except ImportError:  # imported as a top-level module, from examples/digits_cnn itself
    from train import build, evaluate, parse_args, train_epoch


def trial_args(params, seed):
    """train.py's arguments for these hyperparameters: its defaults, overridden by `params` (keys
    spelled like the options, with underscores: lr, batch_size, kernel_size...) and by `seed`."""
    args = parse_args([])
    unknown = sorted(set(params) - set(vars(args)))
    if unknown:
        raise ValueError(f"train.py has no option for {', '.join(unknown)}")
    for name, value in params.items():
        setattr(args, name, type(getattr(args, name))(value))  # the option's type: batch_size 64.0 -> 64
    args.seed = int(seed)
    return args


def objective(trial):
    """Trains with `trial.params` on `trial.device` (default cpu), seeded with `trial.seed` (default
    0); reports each epoch's validation accuracy through `trial.report`, which raises when the trial
    is pruned; hands the trained model to `trial.diagnose` where the handle has one; returns the
    best validation accuracy."""
    args = trial_args(trial.params, getattr(trial, "seed", 0))
    device = torch.device(getattr(trial, "device", "cpu"))
    model, optimizer, train_loader, val_loader = build(args, device)
    best = 0.0
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, device, train_loader, optimizer, args.mixup)
        val_loss, val_accuracy = evaluate(model, device, val_loader)
        best = max(best, val_accuracy)
        trial.report(epoch, val_accuracy, val_loss=val_loss, train_loss=train_loss)
    diagnose = getattr(trial, "diagnose", None)
    if callable(diagnose):
        diagnose(model)
    return best
