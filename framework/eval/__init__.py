"""Evaluation: eval-split loss and samples, questions answered and scored, batched greedy
generation, the evaluation run during training and the launch/eval.py job."""
