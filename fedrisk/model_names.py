"""One way to name a registered model version on every command: NAME@ALIAS or NAME/VERSION.

Commands that read a model's files (`score`, `explain`) also take any MLflow model URI as
MLflow prints it (`models:/m-...`, `runs:/...`); `models:/NAME@ALIAS` is the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedrisk.errors import FedriskInputError

HELP = "a registered model version, NAME@ALIAS or NAME/VERSION (e.g. fedrisk-credit@challenger)"
_NAMED = re.compile(r"^(?:models:/)?(?P<name>[^@/:\s]+)(?:@(?P<alias>[^@/\s]+)|/(?P<version>\d+))$")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:/")


@dataclass(frozen=True)
class ModelName:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self}"


def parse_model(spec: str) -> ModelName:
    """NAME@ALIAS or NAME/VERSION; anything else is one line naming the two forms."""
    found = _NAMED.match(spec.strip())
    if not found:
        raise FedriskInputError(f"model '{spec}': name a registered model version as NAME@ALIAS or NAME/VERSION "
                                "(e.g. fedrisk-credit@challenger or fedrisk-credit/2)")
    return ModelName(found["name"], found["alias"], found["version"])


def is_named(spec: str) -> bool:
    return _NAMED.match(spec.strip()) is not None


def model_uri(spec: str) -> str:
    """The MLflow URI of a model named as `parse_model` reads it, or an MLflow URI as given."""
    if _URI.match(spec) and not _NAMED.match(spec):
        return spec
    return parse_model(spec).uri
