"""A character-level language model's training script, as such scripts print: `step N train loss:
A test loss: B` at each evaluation, among other lines. It knows nothing of tuner. (The loss is a
formula of the flags, not a model: the tests need its output's shape, quickly.)"""

import argparse
import math
import os

parser = argparse.ArgumentParser(description="makemore-style character model")
parser.add_argument("--learning-rate", "-l", type=float, default=5e-4)
parser.add_argument("--weight-decay", "-w", type=float, default=0.01)
parser.add_argument("--max-steps", type=int, default=3000)
parser.add_argument("--eval-every", type=int, default=500)
parser.add_argument("--work-dir", "-o", default="out")
parser.add_argument("--seed", type=int, default=3407)
args = parser.parse_args()

print(f"number of examples in the dataset: 32033, vocabulary size: 27, seed {args.seed}")
os.makedirs(args.work_dir, exist_ok=True)
far = abs(math.log10(args.learning_rate) - math.log10(3e-3))  # best near 3e-3
for step in range(0, args.max_steps + 1, 100):
    train_loss = 1.9 + 0.6 * far + args.weight_decay + 1.4 * math.exp(-step / (400 + 900 * far))
    print(f"step {step} | loss {train_loss + 0.05:.4f} | step time 3.21ms")
    if step % args.eval_every == 0:
        test_loss = train_loss + 0.05 * far
        print(f"step {step} train loss: {train_loss:.4f} test loss: {test_loss:.4f}")
        with open(os.path.join(args.work_dir, "model.pt"), "w") as f:
            f.write(f"lr={args.learning_rate!r} step={step}\n")
        print(f"test loss {test_loss:.4f} is the best we've seen so far, saving model to {args.work_dir}/model.pt")
