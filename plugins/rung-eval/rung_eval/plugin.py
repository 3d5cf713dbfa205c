"""Registration of rung-eval's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_eval_tasks(register):
    register("perplexity", impl="rung_eval.tasks.perplexity:PerplexityTask",
             options="rung_eval.tasks.perplexity:PerplexityOptions",
             summary="perplexity and bits per byte of text files or a data source (rolling windows)")
    register("multiple_choice", impl="rung_eval.tasks.multiple_choice:MultipleChoiceTask",
             options="rung_eval.tasks.multiple_choice:MultipleChoiceOptions",
             summary="JSONL questions and choices, the most likely choice: accuracy and length-normalised accuracy")
    register("generation", impl="rung_eval.tasks.generation:GenerationTask",
             options="rung_eval.tasks.generation:GenerationOptions",
             summary="JSONL prompts completed and scored by reward functions (exact_match, python_parses, ...)")


@hookimpl
def rung_register_reward_functions(register):
    register("python_parses", impl="rung_eval.rewards:PythonParses", options="rung_eval.rewards:PythonParsesOptions",
             summary="1.0 when the completion (``` fence stripped) parses as Python")


@hookimpl
def rung_register_commands(register):
    register("eval", impl="rung_eval.cli:eval_command",
             summary="Evaluate models on tasks (perplexity, multiple choice, generation, lm-eval harness).")
