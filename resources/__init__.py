"""Configurable resources: the home folder, the DuckDB warehouse, the landing source, the model registry."""

from resources.landing import LandingSource
from resources.registry import ModelRegistry, NoChampionError
from resources.warehouse import Warehouse

__all__ = ["LandingSource", "ModelRegistry", "NoChampionError", "Warehouse"]
