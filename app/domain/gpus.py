"""The GPU catalog: which models users may ask for and how Kubernetes nodes advertise them.

Loaded from the packaged ``gpu_catalog.yaml`` or a YAML/JSON file named by the settings, so an
operator can describe the GPUs of their own cluster without a code change.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.domain.errors import FieldError


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=64)
    labels: list[str] = Field(default_factory=list)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "nvidia.com/gpu.product"
    models: list[_ModelEntry]


@dataclass(frozen=True)
class GpuModel:
    code: str
    name: str
    label_values: tuple[str, ...]


@dataclass(frozen=True)
class GpuCatalog:
    """An ordered list of GPU models, looked up by code or by name (case-insensitive)."""

    label: str
    models: tuple[GpuModel, ...]

    def resolve(self, wanted: str) -> GpuModel | None:
        key = wanted.strip().lower()
        for model in self.models:
            if key in (model.code.lower(), model.name.lower()):
                return model
        return None

    def resolve_all(
        self, wanted: list[str], *, field: str
    ) -> tuple[list[GpuModel], list[FieldError]]:
        found: list[GpuModel] = []
        errors: list[FieldError] = []
        for index, item in enumerate(wanted):
            model = self.resolve(item)
            if model is None:
                codes = ", ".join(m.code for m in self.models)
                errors.append(
                    FieldError(
                        f"{field}[{index}]", f"unknown GPU model {item!r}; valid codes: {codes}"
                    )
                )
            elif model not in found:
                found.append(model)
        return found, errors


def _from_text(text: str, source: str) -> GpuCatalog:
    try:
        parsed = _CatalogFile.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as e:
        raise ValueError(f"GPU catalog {source} is invalid: {e}") from e
    models = tuple(GpuModel(m.code, m.name, tuple(m.labels)) for m in parsed.models)
    return GpuCatalog(label=parsed.label, models=models)


def load_catalog(path: Path | None = None) -> GpuCatalog:
    """The catalog from ``path`` (YAML or JSON) or the built-in one."""
    if path is not None:
        return _from_text(path.read_text(encoding="utf-8"), str(path))
    text = resources.files("app.domain").joinpath("gpu_catalog.yaml").read_text(encoding="utf-8")
    return _from_text(text, "built-in")
