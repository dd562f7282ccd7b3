"""`python -m trainer ...`: run one fine-tuning worker (trainer/train.py)."""

import sys

from trainer.train import main

sys.exit(main(sys.argv[1:]))
