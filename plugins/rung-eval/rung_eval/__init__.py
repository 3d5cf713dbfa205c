"""rung-eval: how good a model is, on any rung backend (`rung eval`, a trainer's `eval_tasks:`)."""
