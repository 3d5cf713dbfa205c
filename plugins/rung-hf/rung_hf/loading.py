"""Finding and loading a transformers model and tokenizer: a local directory or a hub id.

Where the hub cannot be reached (HF_HUB_OFFLINE set, `local_files_only`, or no network) a
hub id is looked up in the local cache only, and a model that is not there is one
`RungError` line, found in milliseconds: we never let huggingface_hub retry DNS for ~25 s.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rung.errors import ConfigError, RungError

_TRUE = {"1", "on", "yes", "true"}
_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class Source:
    """Where to load from: a local directory (`local`) or a hub id to download."""

    path: str  # directory, or hub id
    local: bool
    name: str  # what the user wrote, for messages


def hub_offline_by_env() -> bool:
    """True when the environment forbids reaching the hub (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the hub opens within a few seconds (DNS included)."""
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let huggingface_hub try
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(_PROBE_SECONDS + 0.5)
    return bool(answer and answer[0])


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that names a place is a path."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or (len(name) > 1 and name[1] == ":"))


def resolve(name: str, *, field: str, what: str = "model", revision: str | None = None,
            local_files_only: bool = False, marker: str = "config.json") -> Source:
    """A directory or hub id as a Source; offline, the cached snapshot or one clear error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Source(str(path), True, name)
    if path.is_file() and what == "tokenizer":
        return Source(str(path), True, name)
    if _looks_like_path(name) or path.exists():
        raise ConfigError(f"{field}: directory '{name}' does not exist")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"{field}: '{name}' is neither a directory nor a hub id like 'org/name'") from None

    reason = None
    if local_files_only:
        reason = f"{field.rsplit('.', 1)[0]}.local_files_only is set"
    elif hub_offline_by_env():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        reason = None  # plainly unreachable
    else:
        return Source(name, False, name)
    cached = cached_snapshot(name, revision, marker)
    if cached is None:
        why = f" ({reason})" if reason else ""
        raise RungError(
            f"{what} '{name}' is not in the local cache and the hub cannot be reached{why}; "
            f"download it where there is a network or set {field} to a local directory"
        )
    return Source(cached, True, name)


def cached_snapshot(repo_id: str, revision: str | None, marker: str) -> str | None:
    """The local snapshot folder of `repo_id` in the hub cache, if `marker` was downloaded."""
    from huggingface_hub import try_to_load_from_cache

    for filename in (marker, "config.json", "tokenizer_config.json", "tokenizer.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:  # a malformed cache is the same as no cache
            found = None
        if isinstance(found, str):
            return str(Path(found).parent)
    return None


def one_line(exc: BaseException, limit: int = 600) -> str:
    """The whole of an exception's text on one line: transformers and huggingface_hub put the
    cause on the lines after a heading ("Validation error for field 'hidden_size':" then
    "TypeError: ... got str"), so every line is kept; only a huge text is cut, and says so."""
    flat = " ".join(str(exc).split()) or type(exc).__name__
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat)} characters)"


def _is_config_error(exc: BaseException) -> bool:
    """Whether transformers refused a value of config.json (huggingface_hub's strict dataclasses)."""
    return any(cls.__name__ == "StrictDataclassError" for cls in type(exc).__mro__)


def load_error(what: str, source: Source, field: str, exc: BaseException) -> RungError:
    """The RungError for a failed from_pretrained: one line that says what to do."""
    text = str(exc)
    if "trust_remote_code" in text:
        return RungError(
            f"{what} '{source.name}' needs its repository's own Python code; set "
            f"{field.rsplit('.', 1)[0]}.trust_remote_code: true if you trust it"
        )
    name = type(exc).__name__
    missing = "is not a local folder and is not a valid model" in text
    if name in ("RepositoryNotFoundError", "GatedRepoError") or missing:
        return RungError(
            f"{what} '{source.name}' was not found on the hub (a private or gated repository needs "
            f"`hf auth login` or HF_TOKEN); or set {field} to a local directory"
        )
    if name == "RevisionNotFoundError":
        return RungError(f"{what} '{source.name}': revision not found on the hub ({one_line(exc)})")
    if source.local and Path(source.path).is_dir() and _is_config_error(exc):
        return ConfigError(f"{Path(source.path, 'config.json')}: {one_line(exc)}")
    if source.local and not Path(source.path).is_dir():
        return RungError(f"cannot load {what} '{source.name}': {one_line(exc)}")
    if not source.local and ("couldn't connect" in text.lower() or "connection" in text.lower()):
        return RungError(
            f"{what} '{source.name}' could not be downloaded (the hub did not answer); download it "
            f"where there is a network or set {field} to a local directory"
        )
    return RungError(f"cannot load {what} '{source.name}': {one_line(exc)}")


def _debug() -> bool:
    return bool(os.environ.get("RUNG_DEBUG"))


def check_model_dir(directory: str, field: str) -> None:
    """A model directory must hold config.json (a JSON object: rung's reader, as the torch and
    jax backends read it, names the file and line of one that is not) and safetensors weights
    (never pickle)."""
    from rung.model_config import read_json_object

    folder = Path(directory)
    if not (folder / "config.json").is_file():
        raise RungError(f"{field}: '{directory}' has no config.json; is it a Hugging Face model directory?")
    read_json_object(folder / "config.json", "model settings")
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise RungError(
            f"{field}: '{directory}' holds pickle weights (*.bin) only; rung loads safetensors only: "
            f"convert them once where you trust the file (model.save_pretrained writes safetensors)"
        )
    raise RungError(f"{field}: '{directory}' holds no *.safetensors weights")


# ------------------------------------------------------------------ dtypes (devices: rung_torch.device)


def resolve_dtype(dtype: str, device: Any, device_map: Any) -> Any:
    """The dtype to load weights in: `auto` is float32 on the CPU, the checkpoint's on GPUs."""
    import torch

    if dtype == "auto":
        if device_map is None and device.type == "cpu":
            return torch.float32
        return "auto"
    return getattr(torch, dtype)


# ------------------------------------------------------------------ loading


def load_model(options: Any) -> tuple[Any, Any, Source]:
    """(model, device, source) for HFOptions: weights from safetensors, eval mode, on device."""
    source = resolve(options.model, field="backend.model", revision=options.revision,
                     local_files_only=options.local_files_only)
    if source.local:
        check_model_dir(source.path, "backend.model")
    from rung_torch.device import resolve_device

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device, options.device_map)
    kwargs: dict[str, Any] = dict(
        dtype=dtype,
        trust_remote_code=options.trust_remote_code,
        use_safetensors=True,
    )
    if options.revision and not source.local:
        kwargs["revision"] = options.revision
    if source.local:
        kwargs["local_files_only"] = True
    if options.device_map is not None:
        kwargs["device_map"] = options.device_map
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    from transformers import AutoModelForCausalLM

    score = saved_score_weight(source.path) if source.local else None
    report = held_load_report(quiet=score is not None)
    try:
        with quiet_progress(source.local), report:
            model = AutoModelForCausalLM.from_pretrained(source.path, output_loading_info=True, **kwargs)
    except Exception as exc:  # one line for the user, whatever transformers raised
        if _debug():
            raise
        if "ignore_mismatched_sizes" in str(exc):  # its table of shapes is held back: say the first one
            raise shape_mismatch_error(source, report.text) from None
        raise load_error("model", source, "backend.model", exc) from None
    model, info = model
    if score is not None:
        give_back_score_head(model, score, info.get("missing_keys", ()))
    if options.device_map is None:
        model.to(device)
    else:
        device = next(model.parameters()).device
    model.eval()
    return model, device, source


def saved_score_weight(directory: str) -> Any | None:
    """`score.weight` of a local checkpoint that has one (a sequence classifier written by
    rung's `save_scorer` or by transformers), else None; read from the safetensors header on."""
    from safetensors import safe_open

    from rung.model_config import read_json_object

    folder = Path(directory)
    files = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not files[0].is_file() and index.is_file():
        weight_map = read_json_object(index, "weight file names").get("weight_map")
        shard = weight_map.get("score.weight") if isinstance(weight_map, dict) else None
        files = [folder / shard] if isinstance(shard, str) else []
    for file in files:
        if file.is_file():
            with safe_open(str(file), framework="pt") as weights:
                if "score.weight" in weights.keys():
                    return weights.get_tensor("score.weight")
    return None


def give_back_score_head(model: Any, weight: Any, missing: Any) -> None:
    """A sequence classifier loaded as a causal LM: its score head back on the model, and its
    output head, which a classifier has none of, zeros rather than transformers' random init."""
    import torch

    from rung_torch.scoring import attach_score_head

    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    if head is not None and not tied and any(name.endswith("lm_head.weight") for name in missing):
        with torch.no_grad():
            head.weight.zero_()
    attach_score_head(model, weight)


class held_load_report:
    """transformers' load report (a table of missing, unexpected and mismatched weights, logged
    as one warning) held back while a model loads: shown once the load succeeds, dropped when
    it fails (the error says what it held, in one line: `text`), and dropped when `quiet`, for a
    sequence classifier loading as a causal LM (its unexpected `score.weight` and missing
    `lm_head.weight` are expected and handled)."""

    LOGGER = "transformers.modeling_utils"

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.records: list[Any] = []

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)

    def filter(self, record: Any) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True

    def __enter__(self) -> "held_load_report":
        import logging

        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        import logging

        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        if kind is None and not self.quiet:
            for record in self.records:
                logger.handle(record)


_MISMATCH = re.compile(r"^\s*([^|\n]+?)\s*\|\s*MISMATCH\s*\|.*?ckpt:\s*torch\.Size\((\[[^\]]*\])\)"
                       r"\s*vs\s*model:\s*torch\.Size\((\[[^\]]*\])\)", re.M)
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def shape_mismatch_error(source: Source, report: str) -> ConfigError:
    """The one line for weights whose shapes are not the ones config.json gives (a config.json
    missing `hidden_size` gets transformers' default, 4096, say)."""
    where = Path(source.path, "config.json") if source.local else f"model '{source.name}': config.json"
    found = _MISMATCH.findall(_COLOUR.sub("", report))
    detail = ""
    if found:
        name, saved, built = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        detail = f": {name} is {saved} in the weights, {built} by config.json{more}"
    return ConfigError(f"{where}: the weights do not have the shapes it gives{detail}; "
                       "is it the config.json these weights were saved with?")


class quiet_progress:
    """No "Loading weights" bars for a local load (a download keeps its progress bars)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.was_enabled = False

    def __enter__(self) -> None:
        if self.quiet:
            from transformers.utils import logging as hf_logging

            self.was_enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        if self.quiet and self.was_enabled:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()


def load_tokenizer(name: str, *, field: str, revision: str | None = None, trust_remote_code: bool = False,
                   local_files_only: bool = False) -> Any:
    """A transformers tokenizer from a directory, a tokenizer.json file, or a hub id."""
    source = resolve(name, field=field, what="tokenizer", revision=revision,
                     local_files_only=local_files_only, marker="tokenizer_config.json")
    path = Path(source.path)
    try:
        if source.local and path.is_file():
            return _from_tokenizer_json(path)
        if source.local and not (path / "tokenizer_config.json").is_file() and (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(path / "tokenizer.json")
        if source.local and not any(path.glob("tokenizer*")) and not (path / "vocab.json").is_file():
            hint = "; set backend.tokenizer, or give the run a tokenizer section" if field.startswith("backend") else ""
            raise RungError(f"{field}: '{name}' holds no tokenizer (tokenizer.json or tokenizer_config.json){hint}")
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code)
        if revision and not source.local:
            kwargs["revision"] = revision
        if source.local:
            kwargs["local_files_only"] = True
        return AutoTokenizer.from_pretrained(source.path, **kwargs)
    except RungError:
        raise
    except Exception as exc:
        if _debug():
            raise
        raise load_error("tokenizer", source, field, exc) from None


def _from_tokenizer_json(file: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(file))
