"""Registration of rung-rlhf's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_trainers(register):
    register("reward", impl="rung_rlhf.reward:RewardTrainer", options="rung_rlhf.preference_options:RewardOptions",
             summary="a reward model from preference pairs (Bradley-Terry), saved as a transformers classifier",
             objectives=("token_scores",))
    register("dpo", impl="rung_rlhf.dpo:DPOTrainer", options="rung_rlhf.preference_options:DPOOptions",
             summary="direct preference optimisation (sigmoid, IPO, hinge) against a frozen or adapter-free reference",
             objectives=("token_logprobs",))
    register("grpo", impl="rung_rlhf.grpo:GRPOTrainer", options="rung_rlhf.online_options:GRPOOptions",
             summary="group-relative policy optimisation: G sampled completions per prompt, rewarded and compared",
             objectives=("token_logprobs", "sample_tokens"))
    register("ppo", impl="rung_rlhf.ppo:PPOTrainer", options="rung_rlhf.online_options:PPOOptions",
             summary="PPO as in InstructGPT: policy and value head, reward model, per-token KL, GAE, clipped losses",
             objectives=("logprobs_and_scores", "token_logprobs", "token_scores", "sample_tokens"))


@hookimpl
def rung_register_data_sources(register):
    register("preference_jsonl", impl="rung_rlhf.preference_data:PreferenceJsonl",
             options="rung_rlhf.preference_options:PreferenceJsonlOptions",
             summary="preference pairs (prompt, chosen, rejected; or chosen/rejected conversations) from JSONL")
    register("preference_hf", impl="rung_rlhf.preference_data:PreferenceHF",
             options="rung_rlhf.preference_options:PreferenceHFOptions",
             summary="preference pairs from a Hugging Face `datasets` dataset")
    register("prompts_jsonl", impl="rung_rlhf.prompt_data:PromptsJsonl",
             options="rung_rlhf.online_options:PromptsJsonlOptions",
             summary="prompts (with optional reference answers for verifiable rewards) from JSONL")
    register("prompts_hf", impl="rung_rlhf.prompt_data:PromptsHF",
             options="rung_rlhf.online_options:PromptsHFOptions",
             summary="prompts with optional reference answers from a Hugging Face `datasets` dataset")


@hookimpl
def rung_register_reward_functions(register):
    register("numeric_match", impl="rung_rlhf.rewards:NumericMatch", options="rung_rlhf.rewards:NumericMatchOptions",
             summary="1.0 when the completion's first (or last) number equals the reference's, else 0.0")
    register("format_match", impl="rung_rlhf.rewards:FormatMatch", options="rung_rlhf.rewards:FormatMatchOptions",
             summary="1.0 when the whole completion matches a regular expression (default: only a number)")
    register("length", impl="rung_rlhf.rewards:LengthReward", options="rung_rlhf.rewards:LengthOptions",
             summary="1.0 at the target length in characters, falling linearly to 0.0")
    register("starts_with", impl="rung_rlhf.rewards:StartsWith", options="rung_rlhf.rewards:StartsWithOptions",
             summary="1.0 when the completion starts with a given prefix, else 0.0")
