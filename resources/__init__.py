"""Configurable resources: the home folder, the DuckDB warehouse, the engine of the daily tables, the landing source,
the model registry."""

from resources.engine import Engine
from resources.landing import LandingSource
from resources.registry import ModelRegistry, NoChampionError
from resources.warehouse import Warehouse

__all__ = ["Engine", "LandingSource", "ModelRegistry", "NoChampionError", "Warehouse"]
