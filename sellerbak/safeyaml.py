"""YAML loading with bounds: a small file must not become a huge structure.

`yaml.safe_load` constructs no arbitrary objects, but it does expand what a document refers to:
merge keys (`<<: [*a, *a, ...]`) copy the referenced mappings' entries level after level, so a
1 KiB "billion laughs" document takes exponential time and memory to load; plain aliases are
shared rather than copied, yet any code that walks the result (printing an option back, a
comparison, a copy) expands them just the same. A self-referencing alias (`&a [*a]`) makes that
walk endless. So before anything is constructed the composed document is measured as if every
alias were written out; past MAX_NODES nodes, or when it refers to itself, it is refused.

Every failure is a `yaml.MarkedYAMLError`, including the ones PyYAML lets through as other
exceptions: nesting deeper than the interpreter's recursion limit, integers beyond Python's
digit limit, explicitly tagged values that do not parse (`!!timestamp 2024-13-01`).
"""

from __future__ import annotations

from typing import Any

import yaml

#: far more than any configuration needs (a large one has a few hundred nodes)
MAX_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        self._refuse_duplicate_keys(node)
        return super().construct_document(node)

    def _refuse_duplicate_keys(self, root: yaml.Node) -> None:
        """A key written twice in one mapping is refused: PyYAML keeps the last silently, so
        `repository: {url: s3://backup}` overridden further down by a second `url:` would
        send the snapshots elsewhere without a word. Keys a `<<:` merge brings in may be
        overridden, as YAML allows; only a mapping's own keys are compared. The error names
        the key path and the line of the second occurrence, never a value."""
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
                continue
            if not isinstance(node, yaml.MappingNode):
                continue
            keys: set[Any] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or \
                        not isinstance(key_node, yaml.ScalarNode):
                    continue  # merges are flattened by PyYAML; complex keys are refused there
                key = self.construct_object(key_node)
                key_path = f"{path}.{_key_text(key_node)}" if path else _key_text(key_node)
                try:
                    duplicate = key in keys
                    keys.add(key)
                except TypeError:  # unhashable: PyYAML reports it when constructing
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_path}", key_node.start_mark)
                stack.append((value_node, key_path))

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's own constructors, e.g. on
            # an integer of 5000 digits (ValueError), `!!timestamp 2024-13-01`
            # (AttributeError) or `!!bool maybe` (KeyError)
            raise yaml.constructor.ConstructorError(
                None, None, f"a value cannot be read ({type(exc).__name__})",
                node.start_mark) from None


def _key_text(node: yaml.ScalarNode) -> str:
    """A key as written, for a key path in an error: short and printable."""
    text = node.value if node.value.isprintable() else repr(node.value)
    return text if len(text) <= 60 else text[:57] + "..."


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_NODES nodes or into themselves.

    Depth-first without recursion; `sizes` memoises each node's expanded size, so the walk
    costs one visit per distinct node however often it is referred to."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_NODES} values",
                    node.start_mark)
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the value that contains it", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def load(text: str) -> Any:
    """Parse one YAML document with SafeLoader semantics and the bounds above."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except RecursionError:
        raise yaml.MarkedYAMLError(problem="nested too deeply") from None
