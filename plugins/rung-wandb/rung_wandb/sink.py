"""The `wandb` sink: a Weights & Biases run beside the rung run, its files under the run folder.

Each logged step goes to `run.log(metrics, step=step)`: numbers become charts (`task/metric`
names group into sections), strings (generated samples) are logged as strings, which W&B
keeps in the run's history and summary (no chart). The run's saved config.yaml, which rung
writes with every secret left out, becomes the W&B run's config.

`mode: offline` needs no network and no account: the run is written to
`<run folder>/wandb/offline-run-*` and `wandb sync` uploads it later. The API key, when given
here, is a `SecretStr`: it goes to wandb's settings in memory only, never to the environment,
a log line, `~/.netrc` or a saved config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rung.errors import RungError
from rung.options import Options, SecretStr


class WandbSinkOptions(Options):
    """Log metrics to a Weights & Biases run."""

    project: str = Field("rung", description="the W&B project")
    entity: str | None = Field(None, description="the W&B team or user; None: your default entity")
    run_name: str | None = Field(  # not `name`: a sink section's `name` picks the sink
        None, description="the W&B run's name; None: the run folder's name")
    group: str | None = Field(None, description="a W&B group to put the run in")
    tags: list[str] = Field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (no network; `wandb sync` later) or disabled; None: WANDB_MODE, "
        "else online")
    api_key: SecretStr | None = Field(
        None, description="W&B API key; else WANDB_API_KEY or `wandb login` (not needed offline)")
    log_config: bool = Field(True, description="send the run's config (secrets left out) as the W&B config")


class WandbSink:
    """One W&B run for the sink's lifetime: started when built, finished by `close`."""

    def __init__(self, options: WandbSinkOptions, run_dir: Path | None = None) -> None:
        import wandb

        folder = Path(run_dir) if run_dir is not None else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {"console": "off"}  # rung's own console lines stay as they are
        if options.api_key is not None:
            settings["api_key"] = options.api_key.get_secret_value()
        try:
            self.run = wandb.init(
                project=options.project, entity=options.entity, name=options.run_name or folder.resolve().name,
                group=options.group, tags=options.tags or None, mode=options.mode, dir=str(folder),
                config=_saved_config(folder) if options.log_config else None,
                settings=wandb.Settings(**settings), reinit="create_new",
            )
        except Exception as exc:  # wandb's own errors (no key online, a bad entity): one line, no key in it
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            message = "; ".join(lines[:3])[:300] or type(exc).__name__  # a pydantic error names the field
            if options.api_key is not None and options.api_key.get_secret_value():
                message = message.replace(options.api_key.get_secret_value(), "**********")
            raise RungError(f"wandb sink: could not start a W&B run: {message}") from None

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def _saved_config(folder: Path) -> dict[str, Any] | None:
    """The config.yaml `rung run` saved in the run folder (already without secrets), if any."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        return None
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else None
