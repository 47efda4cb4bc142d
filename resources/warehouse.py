"""The DuckDB warehouse: one file under the home folder, opened per use through dagster-duckdb."""

from contextlib import contextmanager
from typing import Iterator

import duckdb
from dagster import ConfigurableResource
from dagster_duckdb import DuckDBResource

from resources.home import home_paths, read_settings


class Warehouse(ConfigurableResource):
    """DuckDB file ``<home>/warehouse.duckdb``.

    Connections are opened for one unit of work and closed right after, so no
    connection is held across assets; dagster-duckdb retries while another
    process holds the file's write lock.
    """

    home: str
    memory_limit: str = "4GB"
    threads: int = 2

    @property
    def timezone(self) -> str:
        """The shop's timezone: partition keys are its days; ``event_time`` is stored in UTC."""
        return read_settings(self.home).get("timezone", "UTC")

    @property
    def path(self) -> str:
        return str(home_paths(self.home)["warehouse"])

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        home_paths(self.home)["warehouse"].parent.mkdir(parents=True, exist_ok=True)
        resource = DuckDBResource(
            database=self.path,
            connection_config={"memory_limit": self.memory_limit, "threads": self.threads},
        )
        with resource.get_connection() as conn:
            yield conn
