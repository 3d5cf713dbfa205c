"""YAML loading that remembers the line of every key, so errors can point at it, in bounded
time and memory whatever the document.

Every config, serve config and task spec goes through `load_yaml_with_lines`. A hostile
document cannot make it run long or climb in memory: the file is capped in size, and the
composed node graph is measured before anything walks it, so nested aliases that would
expand exponentially (a "billion laughs" document) and nesting deeper than any config needs
are refused in one line. PyYAML's composer shares an aliased node rather than copying it, so
composing is linear in the text; what would explode is walking the expanded tree (the line
map, pydantic's validation), and that is what the measurement prevents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rung.errors import ConfigError

Path_ = tuple[str | int, ...]

MAX_BYTES = 16 * 1024 * 1024  # a config or task spec; data files have their own readers
MAX_DEPTH = 64  # mappings and lists inside each other
MAX_VALUES = 100_000  # scalars, mappings and lists, counting each alias at every place it is used


def load_yaml_with_lines(path: str | Path) -> tuple[Any, dict[Path_, int]]:
    """The document at `path` and a map from each dotted path to its 1-based line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a YAML config (at most {MAX_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, origin: str) -> tuple[Any, dict[Path_, int]]:
    """`text` parsed as one YAML document (errors say `origin:line`), with its line map."""
    import yaml

    loader = None
    try:
        _check_nesting(text, origin, yaml)
        loader = _safe_loader(yaml)(text)
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        _check_size(node, origin)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a ReaderError (a NUL, a control character)
        line = mark.line + 1 if mark else text.count("\n", 0, position) + 1 if position is not None else None
        where = f"{origin}:{line}" if line else origin
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[Path_, int] = {}
    _walk(node, (), lines)
    return ({} if data is None else data), lines


_loader_class: Any = None


def _safe_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader, except that a value its constructors cannot build (an integer past
    Python's digit limit, a 13th month) is a YAML error at that value's line, not a ValueError."""
    global _loader_class
    if _loader_class is None:
        from rung.errors import excerpt

        class Loader(yaml.SafeLoader):
            def construct_object(self, node: Any, deep: bool = False) -> Any:
                try:
                    return super().construct_object(node, deep=deep)
                except (ValueError, OverflowError) as exc:
                    kind = str(node.tag).rsplit(":", 1)[-1]
                    raise yaml.constructor.ConstructorError(
                        None, None, f"cannot read {excerpt(node.value)} as {kind} ({str(exc).split(';')[0]})",
                        node.start_mark) from None

        _loader_class = Loader
    return _loader_class


def _check_nesting(text: str, origin: str, yaml: Any) -> None:
    """Stop at the first collection nested deeper than MAX_DEPTH, reading events only: the
    composer recurses once per level (a RecursionError past ~1000) and the scanner's work per
    token grows with the depth, so depth is bounded before either gets far."""
    level = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            level += 1
            if level > MAX_DEPTH:
                raise ConfigError(f"{origin}:{event.start_mark.line + 1}: YAML nested too deeply "
                                  f"(more than {MAX_DEPTH} levels)")
        elif isinstance(event, yaml.CollectionEndEvent):
            level -= 1


def _check_size(root: Any, origin: str) -> None:
    """Refuse a node graph deeper than MAX_DEPTH or expanding to more than MAX_VALUES values.

    Sizes and depths are memoised per node, so a graph of shared aliases is measured in time
    linear in its distinct nodes, not in its expansion; iterative, so no RecursionError.
    """
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool, int]] = [(root, False, 1)]
    on_path: set[int] = set()
    while stack:
        node, done, level = stack.pop()
        key = id(node)
        if level > MAX_DEPTH:
            raise ConfigError(f"{origin}:{node.start_mark.line + 1}: YAML nested too deeply "
                              f"(more than {MAX_DEPTH} levels)")
        children = _children(node, yaml)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_VALUES:
                raise ConfigError(f"{origin}:{node.start_mark.line + 1}: this YAML expands to more than "
                                  f"{MAX_VALUES} values (nested aliases?)")
            if level + depth[key] - 1 > MAX_DEPTH:
                raise ConfigError(f"{origin}:{node.start_mark.line + 1}: YAML nested too deeply "
                                  f"(more than {MAX_DEPTH} levels)")
            continue
        if key in size:  # measured already, through another alias
            if level + depth[key] - 1 > MAX_DEPTH:
                raise ConfigError(f"{origin}:{node.start_mark.line + 1}: YAML nested too deeply "
                                  f"(more than {MAX_DEPTH} levels)")
            continue
        if key in on_path:  # a recursive alias (`&a [*a]`): infinite when expanded
            raise ConfigError(f"{origin}:{node.start_mark.line + 1}: a YAML alias refers to itself")
        on_path.add(key)
        stack.append((node, True, level))
        stack.extend((child, False, level + 1) for child in children if id(child) not in size)


def _children(node: Any, yaml: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _walk(node: Any, prefix: Path_, lines: dict[Path_, int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _walk(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, index)
            lines[key] = item.start_mark.line + 1
            _walk(item, key, lines)
