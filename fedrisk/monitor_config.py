"""Monitoring configuration: which windows to watch, the warning levels, the retraining rule.

The data's columns, the task and the generator settings come from the model's own training
campaign; this file only says where the new windows are and how to judge them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fedrisk.config import StrictModel, absolute_tracking_uri, format_validation_error
from fedrisk.errors import FedriskInputError
from fedrisk.strict_yaml import load_yaml, yaml_reason


class SyntheticWindows(StrictModel):
    """Later windows of the built-in generator, one per severity, each with new rows."""

    scenario: Literal["none", "population_shift", "downturn", "new_fraud_pattern"] = "population_shift"
    severities: list[float] = Field([0.0, 0.0, 0.4, 0.6, 0.6, 1.0], min_length=1, max_length=500)
    rows: int = Field(15_000, ge=100, description="credit: applicants per window over all institutions")

    @model_validator(mode="after")
    def _severities(self) -> SyntheticWindows:
        if any(not 0.0 <= s <= 5.0 for s in self.severities):
            raise ValueError("severities must lie between 0 and 5")
        return self


class Windows(StrictModel):
    """The new data, window after window; each institution reads only its own files."""

    source: Literal["synthetic", "files"] = "synthetic"
    synthetic: SyntheticWindows = SyntheticWindows()
    files: list[dict[str, str]] | None = Field(
        None, description="one mapping institution -> CSV/Parquet file per window, oldest first")
    names: list[str] | None = Field(None, description="a label per window (default: window-1, ...)")

    @field_validator("names", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:  # 2026-06-30 or 2026.06 in YAML are labels too
        return [str(v) for v in value] if isinstance(value, list) else value
    days: int = Field(7, ge=1, le=366, description="fraud: days per window; earlier rows of a file feed the look-back features")

    @model_validator(mode="after")
    def _layout(self) -> Windows:
        if self.source == "files" and not self.files:
            raise ValueError("windows.source 'files' needs windows.files: a list of {institution: file}")
        if self.files is not None and any(not window for window in self.files):
            raise ValueError("every window in windows.files needs at least one institution")
        if self.source == "synthetic" and self.files is not None:
            raise ValueError("windows.files is given but windows.source is 'synthetic': set source: files")
        count = len(self.files) if self.source == "files" and self.files else len(self.synthetic.severities)
        if self.names is not None and len(self.names) != count:
            raise ValueError(f"windows.names has {len(self.names)} labels for {count} windows")
        if self.names is not None and len(set(self.names)) != len(self.names):
            raise ValueError("windows.names must be distinct")
        return self

    def count(self) -> int:
        return len(self.files) if self.source == "files" and self.files else len(self.synthetic.severities)

    def label(self, index: int) -> str:
        return self.names[index] if self.names else f"window-{index + 1}"


class Bands(StrictModel):
    """PSI bands: yellow from `yellow`, orange from `orange`, red from `severe`."""

    yellow: float = Field(0.10, gt=0.0, allow_inf_nan=False)
    orange: float = Field(0.25, gt=0.0, allow_inf_nan=False)
    severe: float = Field(0.50, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Bands:
        if not self.yellow < self.orange < self.severe:
            raise ValueError("PSI bands must satisfy yellow < orange < severe")
        return self


class Performance(StrictModel):
    """Drift of the model's ranking power against its validation reference."""

    metric: Literal["auc", "ks", "average_precision"] = "auc"
    mode: Literal["relative", "absolute"] = "relative"
    max_drop: float = Field(0.05, gt=0.0, lt=1.0, description="the retraining rule: a larger drop triggers")
    near: float = Field(0.5, gt=0.0, lt=1.0, description="yellow from this share of max_drop")
    severe_drop: float = Field(0.10, gt=0.0, lt=1.0, description="red from this drop")

    @model_validator(mode="after")
    def _ordered(self) -> Performance:
        if self.severe_drop <= self.max_drop:
            raise ValueError("performance.severe_drop must exceed performance.max_drop")
        return self


class Levels(StrictModel):
    psi: Bands = Bands()
    csi: Bands = Bands()
    performance: Performance = Performance()
    sustained_windows: int = Field(2, ge=2, description="orange this many windows in a row: red")
    noise_confidence: float = Field(
        0.99, gt=0.5, lt=1.0, description="a PSI below its sampling-noise bound at this confidence stays green")


class Retrain(StrictModel):
    config: str | None = Field(
        None, description="campaign YAML on the new data; None: the model's own campaign (built-in "
                          "data: on the triggering window's data)")
    rounds: int | None = Field(None, ge=1, description="None: as the model's campaign")


class MonitorTracking(StrictModel):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fedrisk-monitoring"


class MonitorConfig(StrictModel):
    model: str | None = Field(None, description="registered model version: NAME@ALIAS or NAME/VERSION")
    windows: Windows = Windows()
    levels: Levels = Levels()
    retrain: Retrain = Retrain()
    tracking: MonitorTracking = MonitorTracking()


def load_monitor_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                        work_dir: str | Path | None = None) -> MonitorConfig:
    """Load and validate; file paths resolve against the config's folder, the store against work_dir."""
    from fedrisk.config import set_dotted

    work = Path(work_dir or Path.cwd()).resolve()
    raw: dict[str, Any] = {}
    source, folder = "built-in monitoring config", work
    if path:
        file = Path(path) if Path(path).is_absolute() else work / path
        if not file.is_file():
            raise FedriskInputError("monitoring config file not found", file=str(file))
        try:
            raw = load_yaml(file.read_text()) or {}
        except UnicodeDecodeError:
            raise FedriskInputError("not a UTF-8 text file", file=str(file)) from None
        except yaml.YAMLError as exc:
            raise FedriskInputError(yaml_reason(exc, "not valid YAML"), file=str(file)) from None
        if not isinstance(raw, dict):
            raise FedriskInputError("a config must be a mapping of keys", file=str(file))
        source, folder = str(file), file.parent.resolve()
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    windows = raw.get("windows")
    if isinstance(windows, dict) and isinstance(windows.get("files"), list):
        windows["files"] = [  # anything but a text path is left for validation to refuse
            {k: str((folder / v).resolve()) if isinstance(v, str) else v for k, v in w.items()}
            if isinstance(w, dict) else w
            for w in windows["files"]
        ]
    retrain = raw.get("retrain")
    if isinstance(retrain, dict) and isinstance(retrain.get("config"), str):
        retrain["config"] = str((folder / retrain["config"]).resolve())
    tracking = raw.setdefault("tracking", {})
    if isinstance(tracking, dict):
        tracking["uri"] = absolute_tracking_uri(str(tracking.get("uri", MonitorTracking().uri)), work)
    try:
        return MonitorConfig.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, source)) from None
