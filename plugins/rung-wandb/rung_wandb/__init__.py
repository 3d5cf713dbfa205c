"""rung-wandb: the `wandb` metric sink (a Weights & Biases run per rung run).

`plugin` registers it; `sink` holds its options and the sink, which imports wandb only when
a run builds it (importing wandb takes over a second).
"""
