"""Reading a staged config into a `Plan`: each stage merged over the top-level sections, its
`{from: STAGE}` references resolved to earlier stages' outputs, and validated by its kind,
every stage before any runs.

Inheritance: a top-level section (`backend:`, `tokenizer:`, `seed:`, ...) is deep-merged under
every stage whose kind takes that key; the stage's own values win. A plugin section whose
`name` differs from the inherited one replaces it rather than merging (a stage's
`data: {name: chat_jsonl}` is not a corpus with extra keys). Lists are replaced whole.

Errors name the file, the line and the path from the top of the document (`stages[2].trainer.lr`);
an inherited key is named in the stage it failed in, at the line it is written on.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.config import apply_override
from rung.errors import ConfigError
from rung.stages.kinds import KINDS, StageKind, TrainerKind, string_leaves
from rung.yaml_lines import Path_, load_yaml_with_lines

#: Keys a staged config may have at its top level: every run config field, and `stages`.
TOP_KEYS = ("output_dir", "seed", "backend", "tokenizer", "data", "trainer", "logging", "stages")


@dataclass
class Stage:
    """One stage of a plan, ready to run."""

    index: int
    name: str
    kind: StageKind
    data: dict[str, Any]  # merged over the top level, `from:` resolved to paths
    output_dir: Path
    output: Path | None  # what `{from: NAME}` reads: a model folder, shards, eval.json, ...
    planned: list[Path]  # every path it writes that later stages may read
    depends: list[str] = field(default_factory=list)  # earlier stages whose outputs it reads
    config: Any = None  # validated by its kind
    hash: str = ""  # of `data`: a changed stage reruns

    @property
    def where(self) -> str:
        return f"stages[{self.index}] ({self.name})"


@dataclass
class Plan:
    """A staged config: where it came from, its folder, and its stages in order."""

    source: str
    output_dir: Path
    stages: list[Stage]

    def stage(self, name: str, option: str) -> Stage:
        """The stage called `name`, or one line naming the stages there are."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = [s.name for s in self.stages]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{option} {name}: no such stage in {self.source}{hint}; stages: {', '.join(names)}")


def load_plan(path: str | Path, overrides: Sequence[str] = (), registry: Any = None) -> Plan:
    """Read, merge, resolve and validate every stage of the staged config at `path`."""
    from rung.paths import planned_paths

    if registry is None:
        from rung.plugins import get_plugins

        registry = get_plugins().registry
    source = str(path)
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    overridden = [apply_override(data, _by_index(data, item, source)) for item in overrides]
    _check_top(data, lines, source, set(overridden))
    raw = data["stages"]
    top = {k: v for k, v in data.items() if k not in ("stages", "output_dir")}
    folder = Path(data.get("output_dir") or Path("runs") / Path(path).stem)
    stages: list[Stage] = []
    for index, section in enumerate(raw):
        at = ("stages", index)
        stage = _stage(index, section, top, folder, stages, registry, source, lines,
                       [str(s["name"]) for s in raw[index:]])
        stage_lines = _stage_lines(lines, at, top, stage.data, section)
        stage_overridden = [p for p in overridden if p[:2] == at] + \
                           [(*at, *p) for p in overridden if p and p[0] != "stages"]
        with planned_paths([p for earlier in stages for p in earlier.planned]):
            stage.config = stage.kind.validate(stage, registry, source=source, lines=stage_lines,
                                               prefix=at, overridden=stage_overridden)
        stage.hash = _hash(stage.data)
        stages.append(stage)
    return Plan(source, folder, stages)


# ---------------------------------------------------------------- the top level


def _by_index(data: Mapping[str, Any], item: str, source: str) -> str:
    """`stages.sft.trainer.steps=5` as `stages.1.trainer.steps=5`: a stage may be named by name."""
    parts = item.split("=", 1)[0].split(".")
    if len(parts) < 2 or parts[0] != "stages" or parts[1].isdigit():
        return item
    stages = data.get("stages")
    names = [s.get("name") for s in stages if isinstance(s, Mapping)] if isinstance(stages, list) else []
    if parts[1] not in names:
        close = difflib.get_close_matches(parts[1], [str(n) for n in names], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"override '{item}': no stage named '{parts[1]}' in {source}{hint}")
    return item.replace(f"stages.{parts[1]}.", f"stages.{names.index(parts[1])}.", 1)


def _check_top(data: dict[str, Any], lines: Mapping[Path_, int], source: str, overridden: set[Path_]) -> None:
    def at(path: Path_) -> str:
        if path in overridden:
            return f"command line override {'.'.join(map(str, path))}"
        return f"{source}:{lines[path]}" if path in lines else source

    for key in data:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{at((key,))}: {key}: unknown key{hint}; a staged config's top level takes "
                              f"{', '.join(TOP_KEYS)}")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{at(('stages',))}: stages: a list of stages, each with a 'name' "
                          f"(got {type(stages).__name__ if stages is not None else 'nothing'})")
    seen: dict[str, int] = {}
    for index, stage in enumerate(stages):
        where = f"{at(('stages', index))}: stages[{index}]"
        if not isinstance(stage, Mapping):
            raise ConfigError(f"{where}: a stage is a mapping with a 'name', got {type(stage).__name__}")
        name = stage.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: a stage needs a 'name' (a word: pretrain, sft, eval-sft, ...)")
        if any(c in name for c in "/\\") or name in (".", ".."):
            raise ConfigError(f"{where}.name: {name!r} names a folder of the ladder's: no '/' in it")
        if name in seen:
            raise ConfigError(f"{where}.name: two stages are named '{name}' (stages[{seen[name]}] too)")
        seen[name] = index


# ---------------------------------------------------------------- one stage


def _stage(index: int, section: Mapping[str, Any], top: Mapping[str, Any], folder: Path,
           earlier: list[Stage], registry: Any, source: str, lines: Mapping[Path_, int],
           later: Sequence[str]) -> Stage:
    at = ("stages", index)
    where = _where(source, lines, at)
    kind = _kind(section, registry, where(()), at)
    own = {k: v for k, v in section.items() if k not in ("name", "kind")}
    for key in own:
        if key not in kind.keys:
            close = difflib.get_close_matches(str(key), kind.keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where((key,))}: unknown key '{key}' for a {kind.title} stage{hint}; "
                              f"allowed: name, kind, {', '.join(kind.keys)}")
    merged = merge({k: v for k, v in top.items() if k in kind.inherits}, own)
    if isinstance(kind, TrainerKind):
        merged.setdefault("trainer", {}).setdefault("name", kind.name)
    name = str(section["name"])
    output_dir = Path(merged.get("output_dir") or folder / name)
    merged["output_dir"] = str(output_dir)
    depends: list[str] = []
    resolved = _resolve_from(merged, (), earlier, depends, where, later)
    depends += [s.name for s in earlier if s.name not in depends and _reads(resolved, s)]
    stage = Stage(index, name, kind, resolved, output_dir, None, [], depends)
    stage.output = kind.output(stage)
    stage.planned = kind.planned(stage)
    return stage


def _kind(section: Mapping[str, Any], registry: Any, where: str, at: Path_) -> StageKind:
    """The stage's kind: its `kind:`, else its own trainer's name, else its name if that is a kind."""
    trainers = registry.names("trainer")
    known = sorted(KINDS) + [t for t in trainers if t not in KINDS]
    kind = section.get("kind")
    trainer = section.get("trainer")
    trainer_name = trainer.get("name") if isinstance(trainer, Mapping) else None
    if kind is None:
        kind = trainer_name or (section["name"] if section["name"] in known else None)
    if kind is None:
        raise ConfigError(f"{where}: say what stage '{section['name']}' does: a 'trainer' section, or "
                          f"kind: {', '.join(known)}")
    if kind in trainers:
        if trainer_name is not None and trainer_name != kind:
            raise ConfigError(f"{where}: kind '{kind}' but trainer.name '{trainer_name}': say one of them")
        return TrainerKind(str(kind))
    if kind in KINDS:
        if trainer is not None:
            raise ConfigError(f"{where}: a {kind} stage has no 'trainer' section")
        return KINDS[kind]
    close = difflib.get_close_matches(str(kind), known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{where}.kind: unknown stage kind '{kind}'{hint}; kinds: {', '.join(known)}")


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` deep-merged onto `base`: mappings merge key by key, anything else is replaced,
    and a plugin section naming another plugin (`name`) replaces the inherited one whole."""
    out = {k: _copy(v) for k, v in base.items()}
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and \
                ("name" not in value or "name" not in old or value["name"] == old["name"]):
            out[key] = merge(old, value)
        else:
            out[key] = _copy(value)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _resolve_from(value: Any, path: Path_, earlier: list[Stage], depends: list[str], where: Any,
                  later: Sequence[str]) -> Any:
    """`value` with every `{from: NAME}` replaced by that earlier stage's output path."""
    if isinstance(value, Mapping):
        if set(value) == {"from"}:
            name = value["from"]
            found = next((s for s in earlier if s.name == name), None)
            if found is None and name in later:
                position = len(earlier) + list(later).index(name)
                when = "is this stage" if name == later[0] else f"runs after this one (stages[{position}])"
                raise ConfigError(f"{where((*path, 'from'))}: stage {name!r} {when}; a stage reads only what "
                                  "earlier stages wrote")
            if found is None:
                names = [s.name for s in earlier]
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                before = f"stages before it: {', '.join(names)}" if names else "it is the first stage"
                raise ConfigError(f"{where((*path, 'from'))}: no stage named {name!r} runs before this one"
                                  f"{hint}; {before}")
            if found.output is None:
                raise ConfigError(f"{where((*path, 'from'))}: stage '{name}' ({found.kind.title}) writes nothing "
                                  f"a later stage can read{found.kind.no_output_hint}")
            if name not in depends:
                depends.append(str(name))
            return str(found.output)
        return {k: _resolve_from(v, (*path, k), earlier, depends, where, later) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_from(v, (*path, i), earlier, depends, where, later) for i, v in enumerate(value)]
    return value


def _reads(data: Any, stage: Stage) -> bool:
    """Whether a path in `data` lies at or under what `stage` writes (a dependency not said by `from:`)."""
    targets = [str(Path(p).absolute()) for p in stage.planned]
    if not targets:
        return False

    for text in string_leaves({k: v for k, v in data.items() if k != "output_dir"}):
        full = str(Path(text).expanduser().absolute())
        if any(full == t or full.startswith(t.rstrip("/") + "/") for t in targets):
            return True
    return False


def _where(source: str, lines: Mapping[Path_, int], at: Path_) -> Any:
    """Names a path inside stage `at` the way config errors do: file:line: stages[i].key."""
    from rung.config import _Where

    return _Where(source, lines, set(), at)


def _stage_lines(lines: Mapping[Path_, int], at: Path_, top: Mapping[str, Any], merged: Mapping[str, Any],
                 own: Mapping[str, Any]) -> dict[Path_, int]:
    """The document's line map, plus the lines of inherited keys as seen inside the stage."""
    out = dict(lines)

    def walk(value: Any, path: Path_) -> None:
        full = (*at, *path)
        if full not in out and path in lines:
            out[full] = lines[path]
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, (*path, k))

    walk({k: v for k, v in merged.items() if k in top}, ())
    return out


def _hash(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
