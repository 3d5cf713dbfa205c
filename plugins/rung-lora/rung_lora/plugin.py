"""Registration of rung-lora's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_trainers(register):
    register("sft", impl="rung_lora.trainer:SFTTrainer", options="rung_lora.options:SFTOptions",
             summary="supervised fine-tuning of every weight on chat / prompt-completion data",
             objectives=("next_token_loss", "token_nll_sum"))
    register("lora", impl="rung_lora.trainer:LoraTrainer", options="rung_lora.options:LoraOptions",
             summary="LoRA / DoRA / QLoRA adapters through peft, saved in the PEFT format",
             objectives=("next_token_loss", "token_nll_sum"))


@hookimpl
def rung_register_data_sources(register):
    register("chat_jsonl", impl="rung_lora.data:ChatJsonl", options="rung_lora.options:ChatJsonlOptions",
             summary="chat examples (messages) or prompt/completion pairs from JSONL files")
    register("chat_hf", impl="rung_lora.data:ChatHF", options="rung_lora.options:ChatHFOptions",
             summary="chat examples or prompt/completion pairs from a Hugging Face `datasets` dataset")


@hookimpl
def rung_register_reward_functions(register):
    register("exact_match", impl="rung_lora.rewards:ExactMatch", options="rung_lora.rewards:ExactMatchOptions",
             summary="1.0 when the completion equals the reference (after normalising), else 0.0")


@hookimpl
def rung_register_export_formats(register):
    register("safetensors", impl="rung_lora.export:export_safetensors", options="rung_lora.export:SafetensorsOptions",
             summary="a plain model folder (safetensors, config.json, tokenizer); an adapter is merged into its base")
