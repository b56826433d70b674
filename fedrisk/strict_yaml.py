"""YAML as fedrisk reads it: a key given twice in one mapping is an error, never the last one.

PyYAML keeps the last of two equal keys in silence: `files: {bank_a: a.csv, bank_a: c.csv}`
would drop an institution's file. Every YAML file fedrisk reads (campaigns, monitoring
configs, gate and institution policies) goes through `load_yaml`.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKey(yaml.YAMLError):
    """A mapping states one key twice; its text is the one line a user sees."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first} and {second})")


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are YAML's own overriding
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                line = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
            if line is not None:
                raise DuplicateKey(key, line + 1, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_reason(error: yaml.YAMLError, default: str) -> str:
    """The one line for a YAML error: the duplicate key named, else `default`."""
    return str(error) if isinstance(error, DuplicateKey) else default
