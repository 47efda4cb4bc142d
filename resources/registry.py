"""The model registry: MLflow tracking and registry behind a small interface."""

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from assets.logic.policies import LEARNED, RULE
from resources.home import home_paths
from resources.transient import RetriesTransientFailures

CHAMPION = "champion"
CHALLENGER = "challenger"


class NoChampionError(RuntimeError):
    """The registry has no version with the ``champion`` alias for a model."""


class RegistryUnavailable(RuntimeError):
    """The MLflow registry did not answer: scoring stops rather than guess a model."""


# MLflow's codes for a registry that did not answer (connection refused, timeout, server error, sqlite busy),
# as opposed to a request it answered with "no" (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE, ...).
UNAVAILABLE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}

# The sqlite stores this process has opened with their schema in place (``ModelRegistry._create_store_once``).
_SCHEMA_READY: set[str] = set()


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: int
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _code_version() -> dict[str, str]:
    """The git commit of the code when it runs from a checkout (``-dirty`` with uncommitted changes), else the
    installed package version."""
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    if commit is not None and commit.returncode == 0:
        return {"code_version": commit.stdout.strip(), "code_version_kind": "git commit"}
    try:
        return {"code_version": version("shopseq"), "code_version_kind": "package version"}
    except PackageNotFoundError:
        return {"code_version": "unknown", "code_version_kind": "none"}


class ModelRegistry(RetriesTransientFailures):
    """MLflow: a local sqlite store under the home folder, or a server.

    ``tracking_uri`` empty means ``sqlite:///<home>/mlflow.db`` with artifacts in
    ``<home>/mlartifacts``; set ``SHOPSEQ_MLFLOW_TRACKING_URI`` to use a server. A registry that does not
    answer raises ``RegistryUnavailable``: inside a Dagster step it is retried ``transient_retries`` times
    after ``retry_delay_seconds``, doubling, so a tracking server that is down fails the run within seconds
    (not after the warehouse's minutes of backoff), and a sqlite store another process holds for a moment
    (each attempt also waits out sqlite's own busy timeout) is still retried.
    ``ui_url`` is where the MLflow UI serves this store: asset metadata links runs and versions there.
    """

    home: str
    tracking_uri: str = ""
    ui_url: str = "http://127.0.0.1:5000"
    transient_retries: int = 2
    retry_delay_seconds: float = 1.0

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        """Turn "the registry did not answer" into ``RegistryUnavailable`` (transient); other errors pass."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            if exc.error_code not in UNAVAILABLE_CODES:
                raise
            raise self.transient(
                RegistryUnavailable(
                    f"cannot {what}: the MLflow registry at {self.resolved_tracking_uri()} did not answer: "
                    f"{str(exc).splitlines()[0][:300]}"
                )
            ) from exc

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI at ``ui_url``."""
        with self._asking(f"read run {run_id}"):
            experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, ref: "ModelVersionRef") -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{ref.name}/versions/{ref.version}"

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{home_paths(self.home)['mlflow_db']}"

    def _mlflow(self):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # An unreachable tracking server fails in seconds, not after MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        home_paths(self.home)["mlflow_db"].parent.mkdir(parents=True, exist_ok=True)
        self._create_store_once(self.resolved_tracking_uri())
        mlflow.set_tracking_uri(self.resolved_tracking_uri())
        mlflow.set_registry_uri(self.resolved_tracking_uri())
        return mlflow

    def _create_store_once(self, uri: str) -> None:
        """Open a local sqlite store for the first time in this process under the exclusive lock on the file
        beside it (``<home>/mlflow.lock``). MLflow creates a store's tables (alembic migrations) when a process
        first opens it, and two processes doing that at once on a fresh home break each other's migration
        (``Online migration expected to match one row``, ``table _alembic_tmp_metrics already exists``): the
        second now waits, then finds the schema in place. ``flock``, as for the warehouse: the kernel drops the
        lock of a process that dies. A server creates its own schema and needs no lock."""
        if not uri.startswith("sqlite:///") or uri in _SCHEMA_READY:
            return
        from mlflow import MlflowClient

        lock_file = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            with self._asking(f"create the MLflow store {uri}"):
                client.search_experiments(max_results=1)  # opens the tracking store: creates every table
                client.search_registered_models(max_results=1)  # and the registry's store on the same file
        _SCHEMA_READY.add(uri)

    def client(self):
        mlflow = self._mlflow()
        return mlflow.MlflowClient(tracking_uri=self.resolved_tracking_uri(), registry_uri=self.resolved_tracking_uri())

    def _experiment_id(self, name: str) -> str:
        mlflow = self._mlflow()
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = home_paths(self.home)["mlartifacts"] / name
        return mlflow.create_experiment(name, artifact_location=location.resolve().as_uri())

    def _log_version(
        self,
        model_name: str,
        log_model,
        features: pd.DataFrame,
        predict,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        tables,
        datasets,
        figures,
    ) -> ModelVersionRef:
        """One training run: parameters, metrics, tables, dataset inputs, figures and the model ``log_model(mlflow,
        signature, input_example)`` logs and registers as a new version of ``model_name``."""
        mlflow = self._mlflow()
        import matplotlib.pyplot as plt
        from mlflow.models import infer_signature

        example = features.head(5)
        signature = infer_signature(example, predict(example))
        with (
            self._asking(f"log a training run of {model_name}"),
            mlflow.start_run(experiment_id=self._experiment_id(model_name), tags={**tags, **_code_version()}) as run,
        ):
            mlflow.log_params(params)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            for context, (frame, name) in (datasets or {}).items():
                mlflow.log_input(mlflow.data.from_pandas(frame, name=name), context=context)
            for name, table in (tables or {}).items():
                mlflow.log_table(table, artifact_file=f"{name}.json")
            for name, figure in (figures or {}).items():
                mlflow.log_figure(figure, f"{name}.png")
                plt.close(figure)
            info = log_model(mlflow, signature, example)
        ref = ModelVersionRef(model_name, int(info.registered_model_version), run.info.run_id)
        with self._asking(f"tag {model_name} version {ref.version}"):
            for key in ("policy", "policy_kind", "policy_sha256"):
                if key in tags:
                    self.client().set_model_version_tag(model_name, str(ref.version), key, tags[key])
        return ref

    def log_lightgbm(
        self,
        model_name: str,
        booster: Any,
        features: pd.DataFrame,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        tables: dict[str, pd.DataFrame] | None = None,
        datasets: dict[str, tuple[pd.DataFrame, str]] | None = None,
        figures: dict[str, Any] | None = None,
    ) -> ModelVersionRef:
        """Log one training run with its model, register it and mark it ``challenger``.

        ``datasets``: {context: (frame, name)} logged as MLflow dataset inputs (with MLflow's digest of the
        data); ``figures``: {file name: matplotlib figure}; the code version is tagged."""
        import lightgbm

        ref = self._log_version(
            model_name,
            lambda mlflow, signature, example: mlflow.lightgbm.log_model(
                booster,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"pandas=={pd.__version__}"],
                registered_model_name=model_name,
            ),
            features,
            booster.predict,
            params,
            metrics,
            {**tags, "policy": "lightgbm", "policy_kind": LEARNED},
            tables,
            datasets,
            figures,
        )
        with self._asking(f"mark {model_name} version {ref.version} {CHALLENGER}"):
            self.client().set_registered_model_alias(model_name, CHALLENGER, str(ref.version))
        return ref

    def rule_version(
        self,
        model_name: str,
        policy: Any,
        features: pd.DataFrame,
        metrics: dict[str, float],
        tags: dict[str, str],
        tables: dict[str, pd.DataFrame] | None = None,
    ) -> ModelVersionRef:
        """The version of ``model_name`` holding exactly this rule policy (the same ``policy_sha256``), registered
        now (an MLflow pyfunc whose ``predict`` is the rule, with its definition as parameters) if none does."""
        import numpy as np

        from resources.rule_model import RuleModel

        digest = policy.sha256()  # hex digits and a catalogue model name: nothing from a user in the filter
        with self._asking(f"look for {policy.name} in {model_name}"):
            found = self.client().search_model_versions(f"name = '{model_name}' and tags.policy_sha256 = '{digest}'")
        if found:
            first = min(found, key=lambda mv: int(mv.version))
            return ModelVersionRef(model_name, int(first.version), first.run_id)
        return self._log_version(
            model_name,
            lambda mlflow, signature, example: mlflow.pyfunc.log_model(
                name="model",
                python_model=RuleModel(policy),
                signature=signature,
                input_example=example,
                pip_requirements=[f"numpy=={np.__version__}", f"pandas=={pd.__version__}"],
                registered_model_name=model_name,
            ),
            features,
            policy.predict,
            policy.params(),
            metrics,
            {
                **tags,
                "policy": policy.name,
                "policy_kind": RULE,
                "policy_sha256": digest,
                "policy_definition": policy.describe()[:5000],
            },
            tables,
            None,
            None,
        )

    def version_for_alias(self, model_name: str, alias: str) -> ModelVersionRef | None:
        """The version ``alias`` points at; None when the model or alias does not exist. Raises
        ``RegistryUnavailable`` when the registry cannot be asked."""
        from mlflow.exceptions import MlflowException

        try:
            with self._asking(f"read alias {alias!r} of {model_name!r}"):
                mv = self.client().get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            if "not found" in str(exc).lower() or exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return ModelVersionRef(model_name, int(mv.version), mv.run_id)

    def set_alias(self, ref: ModelVersionRef, alias: str, reason: str) -> None:
        client = self.client()
        with self._asking(f"move alias {alias!r} of {ref.name}"):
            client.set_registered_model_alias(ref.name, alias, str(ref.version))
        client.set_model_version_tag(ref.name, str(ref.version), f"{alias}_reason", reason)

    def annotate(self, ref: ModelVersionRef, description: str, tags: dict[str, str]) -> None:
        """Write a decision about a version where the MLflow UI shows it: its description and tags."""
        client = self.client()
        with self._asking(f"annotate {ref.name} version {ref.version}"):
            client.update_model_version(ref.name, str(ref.version), description=description)
            for key, value in tags.items():
                client.set_model_version_tag(ref.name, str(ref.version), key, value)

    def champion(self, model_name: str) -> ModelVersionRef:
        ref = self.version_for_alias(model_name, CHAMPION)
        if ref is None:
            raise NoChampionError(
                f"model {model_name!r} has no '{CHAMPION}' version in the registry at "
                f"{self.resolved_tracking_uri()}: train and promote one first (shopseq run, or the training job)"
            )
        return ref

    def version(self, model_name: str, version: int) -> ModelVersionRef:
        from mlflow.exceptions import MlflowException

        try:
            with self._asking(f"read {model_name} version {version}"):
                mv = self.client().get_model_version(model_name, str(version))
        except MlflowException as exc:
            raise ValueError(
                f"model {model_name!r} has no version {version} in {self.resolved_tracking_uri()}"
            ) from exc
        return ModelVersionRef(model_name, int(mv.version), mv.run_id)

    def versions(self, model_name: str) -> list[tuple[ModelVersionRef, dict[str, str]]]:
        """Every registered version of a model (oldest first) with its training run's tags; none if unknown."""
        client = self.client()
        with self._asking(f"list the versions of {model_name}"):
            found = sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda mv: int(mv.version))
        refs = [ModelVersionRef(model_name, int(mv.version), mv.run_id) for mv in found]
        return [(ref, self.run_tags(ref)) for ref in refs]

    def run_tags(self, ref: ModelVersionRef) -> dict[str, str]:
        with self._asking(f"read run {ref.run_id}"):
            return dict(self.client().get_run(ref.run_id).data.tags)

    def load_policy(self, ref: ModelVersionRef):
        """The version's model: a LightGBM booster, or the ``RulePolicy`` of a rule version (both score with
        ``predict`` and name their inputs with ``feature_name``)."""
        kind = self.run_tags(ref).get("policy_kind", LEARNED)  # versions logged before rules were policies: learned
        with self._asking(f"load {ref.uri}"):
            if kind == RULE:
                return self._mlflow().pyfunc.load_model(ref.uri).unwrap_python_model().policy
            return self._mlflow().lightgbm.load_model(ref.uri)
