"""What the online trainers (grpo, ppo) share: the run around their rollouts and their loss.

`OnlineTrainer.train(run)`: read and split the prompts, format them with the chat template
(`rung_rlhf.formatting`, as sft renders them), add LoRA adapters (and PPO's value head), set up
the reference policy for a KL term (`backend.frozen_copy()` when every weight trains, the same
model with its adapters switched off under LoRA), build the rewards (registered reward
functions, a reward model's score head), hand the loss and a `RolloutStream` to the backend's
engine, and save the result. A subclass gives its loss, its `finish` (advantages) and what
it reads from the policy at sampling time.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from rung.config import config_to_dict
from rung.context import RunContext
from rung.decoding import Sampling
from rung.errors import ConfigError
from rung.records import LoraSpec, RewardedPrompt, TrainResult

from rung_lora.data import split_examples
from rung_lora.saving import save_tokenizer
from rung_lora.templates import make_renderer
from rung_lora.trainer import base_reference, evaluate_now, model_context, resolve_tokenizer
from rung_rlhf.formatting import Formatter, formatter
from rung_rlhf.rollouts import RewardEvaluator, Rewarder, RewardModelScorer, Rollout, RolloutStream, to_numpy
from rung_rlhf.rollouts import unique_names


class OnlineTrainer:
    """The shared run of grpo and ppo (see the module docstring)."""

    options_model: type = object
    group_size_default = 1
    layout_default = "separate"

    def __init__(self, options: Any) -> None:
        self.options = options
        self.adapters: Any = None
        self.base: str | None = None
        self.formatter: Formatter | None = None
        self.stream: RolloutStream | None = None
        self.evaluator: RewardEvaluator | None = None

    # -- what a subclass gives

    @property
    def group_size(self) -> int:
        return int(getattr(self.options, "num_generations", self.group_size_default))

    @property
    def layout(self) -> str:
        return str(getattr(self.options, "layout", self.layout_default))

    def loss(self, run: RunContext) -> Any:
        raise NotImplementedError

    def finish(self, rollout: Rollout) -> dict[str, np.ndarray]:
        """The loss's per-token arrays of one rollout (advantages, weights)."""
        raise NotImplementedError

    def old_arrays(self, run: RunContext) -> Any:
        """fn(policy, batch) -> sampling-time arrays; None: `old_logprobs` from token_logprobs."""
        return None

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        """Change the model before the reference is taken and the engine made."""
        if self.options.lora is not None:
            self.add_lora(run, backend)

    # -- the run

    def add_lora(self, run: RunContext, backend: Any) -> None:
        o = self.options.lora
        if not callable(getattr(backend, "adapters", None)):
            raise ConfigError(f"trainer.lora: backend '{run.config.backend.name}' cannot carry LoRA adapters")
        self.adapters = backend.adapters()
        self.base = base_reference(run, backend)
        targets = o.target_modules if isinstance(o.target_modules, str) else tuple(o.target_modules)
        self.adapters.add_lora(LoraSpec(r=o.r, alpha=o.alpha, dropout=o.dropout, target_modules=targets,
                                        rslora=o.use_rslora, seed=run.seed))
        trainable, total = self.adapters.trainable_parameters()
        run.log(0, {"trainable_params": float(trainable), "total_params": float(total)})

    def reference(self, run: RunContext, backend: Any, token_logprobs: Any) -> Any:
        """fn(policy, batch) -> the reference's token log-probs; None without a KL term."""
        if not self.options.beta:
            return None
        if self.adapters is not None:
            adapters = self.adapters

            def with_adapters_off(policy: Any, batch: dict) -> np.ndarray:
                with adapters.disabled(policy) as base:
                    return to_numpy(token_logprobs(base, batch)[0])

            return with_adapters_off
        if not callable(getattr(backend, "frozen_copy", None)):
            raise ConfigError(f"trainer.beta: backend '{run.config.backend.name}' has no frozen_copy() for a "
                              "reference; set beta: 0 or train LoRA adapters (trainer.lora)")
        frozen = backend.frozen_copy()

        def with_frozen_copy(policy: Any, batch: dict) -> np.ndarray:
            return to_numpy(token_logprobs(frozen, batch)[0])

        return with_frozen_copy

    def rewarder(self, run: RunContext, backend: Any, max_length: int) -> Rewarder:
        opts = self.options
        names = unique_names(opts.rewards)
        functions = [(name, run.build("reward_function", section, f"trainer.rewards[{i}]"))
                     for i, (name, section) in enumerate(zip(names, opts.rewards))]
        scorer = None
        if opts.reward_model is not None:
            scorer = self.reward_model(run, backend, max_length)
        return Rewarder(functions, scorer, opts.reward_weights)

    def reward_model(self, run: RunContext, backend: Any, max_length: int) -> RewardModelScorer:
        opts = self.options
        rm = run.build("backend", opts.reward_model, "trainer.reward_model")
        if getattr(rm, "framework", None) != getattr(backend, "framework", None):
            raise ConfigError(f"trainer.reward_model: a {getattr(rm, 'framework', None)} backend beside a "
                              f"{backend.framework} policy; use the policy's framework")
        heads = rm.score_heads() if callable(getattr(rm, "score_heads", None)) else None
        if heads is None or not heads.has_score_head():
            raise ConfigError(f"trainer.reward_model: {opts.reward_model.get('model')!r} has no score head; "
                              "train one with trainer: reward")
        tokenizer = resolve_tokenizer(run, rm) if getattr(rm, "tokenizer", None) is None else rm.tokenizer
        from rung.transformers_tokenizer import as_rung_tokenizer

        tokenizer = as_rung_tokenizer(tokenizer)
        fmt = Formatter(make_renderer(opts.chat_template, tokenizer), tokenizer, system_prompt=opts.system_prompt)
        pad = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)
        return RewardModelScorer(rm.model, run.objective("token_scores"), fmt, pad,
                                 min(max_length, model_context(rm.model) or max_length))

    def prompts(self, run: RunContext) -> tuple[list[RewardedPrompt], list[RewardedPrompt]]:
        opts = self.options
        examples = list(run.data().read())
        for example in examples[:1]:
            if not isinstance(example, RewardedPrompt):
                raise ConfigError(f"data: trainer '{run.config.trainer.name}' needs prompts (prompts_jsonl, "
                                  f"prompts_hf), got {type(example).__name__} from '{run.config.data.name}'")
        if opts.eval_data is not None:
            held = list(run.build("data_source", opts.eval_data, "trainer.eval_data").read())
            return examples, held
        return split_examples(examples, opts.eval_size, run.seed)

    def _resuming(self, run: RunContext) -> bool:
        folder = run.output_dir / "checkpoints"
        return self.options.resume != "never" and folder.is_dir() and any(folder.iterdir())

    def train(self, run: RunContext) -> TrainResult:
        opts = self.options
        backend = run.backend()
        tokenizer = resolve_tokenizer(run, backend)
        self.formatter = fmt = formatter(opts, tokenizer)
        context = model_context(getattr(backend, "model", None))
        max_length = opts.max_length
        train, held = self.prompts(run)
        train_ids = [fmt.prompt_ids(p.prompt) for p in train]
        held = held[: opts.eval_generate]
        held_ids = [fmt.prompt_ids(p.prompt) for p in held]
        longest = max((len(p) for p in train_ids + held_ids), default=0)
        if context and longest + opts.max_completion_length > context:
            raise ConfigError(f"trainer.max_completion_length {opts.max_completion_length} after a prompt of "
                              f"{longest} tokens exceeds the model's context of {context}; lower it or "
                              "max_prompt_length")
        stop_ids = frozenset(t for t in (tokenizer.eos_id, getattr(tokenizer, "end_of_turn_id", None)) if t is not None)
        sampling = Sampling(max_tokens=opts.max_completion_length, temperature=opts.temperature, top_k=opts.top_k,
                            top_p=opts.top_p, stop=fmt.renderer.stop, stop_ids=stop_ids)
        self.prepare_model(run, backend)
        sample_tokens, token_logprobs = run.objective("sample_tokens"), run.objective("token_logprobs")
        reference = self.reference(run, backend, token_logprobs)
        rewarder = self.rewarder(run, backend, max_length)
        run.log(0, {"train_prompts": float(len(train)), "eval_prompts": float(len(held)),
                    "template": fmt.renderer.name})

        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        pad_id = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)
        # Packed rows no longer than the model's context (rung's model refuses longer inputs even
        # where, as here, no position reaches it); a group too long for one row takes several.
        row_limit = min(max_length, context) if context else max_length
        self.stream = stream = RolloutStream(
            train, train_ids, sample_tokens=sample_tokens, token_logprobs=token_logprobs, rewarder=rewarder,
            tokenizer=tokenizer, sampling=sampling, batch_size=opts.batch_size, group_size=self.group_size,
            max_length=row_limit, pad_id=pad_id, layout=self.layout, num_iterations=opts.num_iterations,
            grad_accum_steps=opts.grad_accum_steps, seed=run.seed, shuffle=opts.shuffle, rank=rank,
            world_size=world, reference=reference, old_arrays=self.old_arrays(run), finish=self.finish)
        evaluate = None
        if held:
            self.evaluator = evaluate = RewardEvaluator(
                held, held_ids, sample_tokens=sample_tokens, rewarder=rewarder, tokenizer=tokenizer,
                sampling=sampling, rows=max(opts.batch_size * self.group_size, 8))
        if evaluate is not None and opts.eval_on_start and rank == 0 and not self._resuming(run):
            run.log(0, evaluate_now(engine, evaluate, backend))
        result = engine.fit(self.loss(run), stream, opts, run, evaluate)
        if rank == 0:
            self.save(run, backend, tokenizer)
        return result

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        template = self.formatter.renderer.jinja if self.formatter is not None else None
        if self.adapters is not None:
            target = run.output_dir / "adapter"
            self.adapters.save_adapter(target, base=self.base, backend=run.config.backend.name,
                                       backend_options=config_to_dict(run.config.backend), chat_template=template)
        else:
            target = run.output_dir / "model"
            backend.save(target)
        with contextlib.suppress(AttributeError):
            save_tokenizer(tokenizer, target, template)


def reward_metrics(batch: Any, reference: Any) -> dict[str, Any]:
    """The batch's completion rewards as loss metrics (framework scalars): reward_mean,
    reward_std, reward_<name> per reward, completion_length, finished_fraction."""
    from rung_rlhf.ops import like, namespace

    xp = namespace(reference)
    rewards = like(batch["rewards"], reference)
    out = {"reward_mean": xp.mean(rewards), "reward_std": xp.std(rewards),
           "completion_length": xp.mean(like(batch["completion_length"], reference)),
           "finished_fraction": xp.mean(like(batch["finished"], reference))}
    for key in batch:
        if isinstance(key, str) and key.startswith("reward/"):
            out[f"reward_{key[len('reward/'):]}"] = xp.mean(like(batch[key], reference))
    return out
