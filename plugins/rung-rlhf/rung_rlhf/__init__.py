"""rung-rlhf: reward models, DPO, GRPO and PPO, framework-neutral (see README.md)."""
