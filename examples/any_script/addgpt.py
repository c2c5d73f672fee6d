"""A small GPT trained on addition problems, printing as its repository does: `iter_dt ...; iter
N: train loss L` as it trains, and at each evaluation `test final score: 363/500 = 72.60% correct`.
It knows nothing of tuner; its scores are a formula of the flags, so that it runs in a blink."""

import argparse
import math

parser = argparse.ArgumentParser()
parser.add_argument("--trainer.learning_rate", dest="lr", type=float, default=5e-4)
parser.add_argument("--model.n_layer", dest="n_layer", type=int, default=3)
parser.add_argument("--max-iters", type=int, default=2000)
args = parser.parse_args()

far = abs(math.log10(args.lr) - math.log10(1e-3)) + abs(args.n_layer - 4) * 0.1
for it in range(0, args.max_iters + 1, 100):
    loss = 0.2 + far + 2.0 * math.exp(-it / 500)
    print(f"iter_dt 12.34ms; iter {it}: train loss {loss:.5f}")
    if it > 0 and it % 500 == 0:
        correct = int(500 * min(1.0, max(0.0, (1 - math.exp(-it / 700)) * (1 - far / 2))))
        print(f"train final score: {correct * 10}/5000 = {100 * correct / 500:.2f}% correct")
        print(f"test final score: {correct}/500 = {100 * correct / 500:.2f}% correct")
        print("saving model")
