"""A word-level LSTM language model's training script, printing its epochs as a well-known
examples repository does (`| end of epoch 1 | ... | valid loss 6.84 | valid ppl 933.00`). It
knows nothing of tuner; its losses are a formula of the flags, so that it runs in a blink."""

import argparse
import math
import sys

parser = argparse.ArgumentParser(description="PyTorch Wikitext-2 RNN/LSTM/GRU/Transformer Language Model")
parser.add_argument("--lr", type=float, default=20, help="initial learning rate")
parser.add_argument("--dropout", type=float, default=0.2, help="dropout applied to layers (0 = no dropout)")
parser.add_argument("--epochs", type=int, default=6, help="upper epoch limit")
parser.add_argument("--save", type=str, default="model.pt", help="path to save the final model")
parser.add_argument("--seed", type=int, default=1111)
args = parser.parse_args()

for epoch in range(1, args.epochs + 1):
    far = abs(math.log(args.lr / 20.0)) + abs(args.dropout - 0.3)
    train = 5.0 + far + 2.0 / epoch
    for batch in (200, 400, 600):
        print(f"| epoch {epoch:3d} | {batch:5d}/ 2983 batches | lr {args.lr:02.2f} | ms/batch 10.53 | loss {train:5.2f} | ppl {math.exp(train):8.2f}")
    valid = train - 0.3
    if not math.isfinite(math.exp(valid)):
        print("RuntimeError: overflow", file=sys.stderr)
        sys.exit(1)
    print("-" * 89)
    print(f"| end of epoch {epoch:3d} | time: {0.12:5.2f}s | valid loss {valid:5.2f} | valid ppl {math.exp(valid):8.2f}")
    print("-" * 89)
    with open(args.save, "w") as f:
        f.write(f"lr={args.lr!r} dropout={args.dropout!r} epoch={epoch}\n")
print("=" * 89)
print(f"| End of training | test loss {valid + 0.1:5.2f} | test ppl {math.exp(valid + 0.1):8.2f}")
print("=" * 89)
