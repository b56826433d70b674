"""One way to name a registered model version on every command: NAME@ALIAS or NAME/VERSION.

Commands that read a model's files (`score`, `explain`) also take any MLflow model URI as
MLflow prints it (`models:/m-...`, `runs:/...`) or a model folder; `models:/NAME@ALIAS` is the
same name. What reads as a name is a name: a folder called `fedrisk-credit/2` is `./fedrisk-credit/2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedrisk.errors import FedriskInputError

HELP = "a registered model version, NAME@ALIAS or NAME/VERSION (e.g. fedrisk-credit@challenger)"
_NAMED = re.compile(r"^(?:models:/)?(?P<name>[^@/:\s]+)(?:@(?P<alias>[^@/\s]+)|/(?P<version>[0-9]+))$")
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
    if not found or not spec.strip().isprintable():  # a zero-width character makes a look-alike
        raise FedriskInputError(f"model {spec!r}: name a registered model version as NAME@ALIAS or NAME/VERSION "
                                "(e.g. fedrisk-credit@challenger or fedrisk-credit/2)")
    version = None if found["version"] is None else str(int(found["version"]))  # 007 is 7
    return ModelName(found["name"], found["alias"], version)


def model_uri(spec: str) -> str:
    """What MLflow loads for `spec`: a registered version's URI when it reads as a name, else an
    MLflow URI or an existing folder as given; anything else is `parse_model`'s one line."""
    if not _NAMED.match(spec.strip()) and (_URI.match(spec) or Path(spec).exists()):
        return spec
    if "/" in spec and not _NAMED.match(spec.strip()):
        raise FedriskInputError(f"model {spec!r}: no model folder there, and not NAME@ALIAS or NAME/VERSION")
    return parse_model(spec).uri
