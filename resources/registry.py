"""The model registry: MLflow tracking and registry behind a small interface."""

import fcntl
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import InitResourceContext
from pydantic import PrivateAttr

# ``assets.logic.policies`` is imported where it is used: importing any module of the ``assets`` package builds the
# asset graph, whose modules import this package (``import resources`` first would then find it half made).
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
# The tracking servers that have answered this process once (``ModelRegistry._check_server``).
_SERVER_ANSWERED: set[str] = set()

TRACKING_URI_VARIABLE = "SHOPSEQ_MLFLOW_TRACKING_URI"
UI_URL_VARIABLE = "SHOPSEQ_MLFLOW_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
# How long a tracking server may take to answer its health check before it counts as down.
SERVER_CHECK_TIMEOUT_SECONDS = 10


# The rows MLflow infers a dataset input's schema from (``_dataset_entity``).
SCHEMA_ROWS = 1_000
EXAMPLE_ROWS = 5  # the input example logged with a model, and what its signature is inferred from


def _dataset_entity(frame: pd.DataFrame, name: str):
    """``frame`` as an MLflow dataset input: its schema as MLflow infers it from the first ``SCHEMA_ROWS`` rows, its
    row and value counts, and a digest of every row. ``mlflow.data.from_pandas`` on the whole frame looks at every
    value in Python to infer the schema (9 s for 200,000 rows of 27 columns, most of a model asset's MLflow time)."""
    import hashlib

    import mlflow.data
    from mlflow.entities import Dataset

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(rows.tobytes() + str(list(frame.columns)).encode()).hexdigest()[:8]
    head = mlflow.data.from_pandas(frame.head(SCHEMA_ROWS), name=name, digest=digest)._to_mlflow_entity()
    return Dataset(
        name=head.name,
        digest=digest,
        source_type=head.source_type,
        source=head.source,
        schema=head.schema,
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )


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
    """MLflow: a local sqlite store under the home folder, or a server, through one explicit ``MlflowClient``
    (MLflow's process-wide tracking URI and environment are left alone).

    ``tracking_uri`` empty means ``$SHOPSEQ_MLFLOW_TRACKING_URI`` as the run starts, else
    ``sqlite:///<home>/mlflow.db`` with artifacts in ``<home>/mlartifacts`` (a server keeps its own artifacts). A
    registry that does not answer raises ``RegistryUnavailable``: inside a Dagster step it is retried
    ``transient_retries`` times after ``retry_delay_seconds``, doubling; a server is asked its health first (for up
    to ``SERVER_CHECK_TIMEOUT_SECONDS``) until it has answered once, so a tracking server that is down fails the run
    within seconds (not after MLflow's minutes of HTTP retries), and a sqlite store another process holds for a
    moment (each attempt also waits out sqlite's own busy timeout) is still retried.
    ``ui_url`` is where the MLflow UI serves this store (asset metadata links runs and versions there); empty
    means ``$SHOPSEQ_MLFLOW_UI_URL`` as the run starts, else ``http://127.0.0.1:5000``.
    """

    home: str
    tracking_uri: str = ""
    ui_url: str = ""
    transient_retries: int = 2
    retry_delay_seconds: float = 1.0
    # The environment variables behind the empty settings, read once as Dagster sets the resource up for a run
    # (``EnvVar`` cannot say "unset means the default").
    _environment: dict[str, str] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._environment = {
            name: os.environ[name] for name in (TRACKING_URI_VARIABLE, UI_URL_VARIABLE) if os.environ.get(name)
        }

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
        return f"{self.resolved_ui_url().rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, ref: "ModelVersionRef") -> str:
        return f"{self.resolved_ui_url().rstrip('/')}/#/models/{ref.name}/versions/{ref.version}"

    def resolved_tracking_uri(self) -> str:
        return (
            self.tracking_uri
            or self._environment.get(TRACKING_URI_VARIABLE)
            or f"sqlite:///{home_paths(self.home)['mlflow_db']}"
        )

    def resolved_ui_url(self) -> str:
        return self.ui_url or self._environment.get(UI_URL_VARIABLE) or DEFAULT_UI_URL

    def create_store(self) -> None:
        """A local sqlite store's tables, created now if this process has not opened the store yet
        (``_create_store_once``); a tracking server keeps its own."""
        self._create_store_once(self.resolved_tracking_uri())

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

    def _check_server(self, uri: str) -> None:
        """A tracking server that has not answered this process yet is asked its health (``GET /health``) with a
        short timeout: MLflow's own client retries a refused connection for minutes, and its retry settings are
        process-wide environment variables, which a resource does not set. Called inside ``_asking``."""
        if not uri.startswith(("http://", "https://")) or uri in _SERVER_ANSWERED:
            return
        from mlflow.exceptions import MlflowException

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_SECONDS):
                pass
        except urllib.error.HTTPError:
            pass  # an error status is an answer (a server behind a proxy may have no /health)
        except OSError as error:  # refused, unreachable, timed out: ``_asking`` makes it RegistryUnavailable
            raise MlflowException(f"health check: {error}", error_code="TEMPORARILY_UNAVAILABLE") from error
        _SERVER_ANSWERED.add(uri)

    def client(self):
        """An ``MlflowClient`` on this registry's tracking and registry URI."""
        from mlflow import MlflowClient

        uri = self.resolved_tracking_uri()
        if uri.startswith("sqlite:///"):
            home_paths(self.home)["mlflow_db"].parent.mkdir(parents=True, exist_ok=True)
        self._check_server(uri)
        self._create_store_once(uri)
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _experiment_id(self, client, name: str) -> str:
        """The experiment ``name``, created the first time: its artifacts in ``<home>/mlartifacts/<name>``, or, on
        a tracking server, where the server keeps artifacts (its ``--artifacts-destination``, S3 in production),
        so that every machine asking the server reads and writes the same files."""
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if self.resolved_tracking_uri().startswith(("http://", "https://")):
            return client.create_experiment(name)
        location = home_paths(self.home)["mlartifacts"] / name
        return client.create_experiment(name, artifact_location=location.resolve().as_uri())

    def _log_version(
        self,
        model_name: str,
        save_model,
        features: pd.DataFrame,
        predict,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        tables,
        datasets,
        figures,
    ) -> ModelVersionRef:
        """One training run: parameters, metrics, tables, dataset inputs, figures, and the model, which
        ``save_model(path, mlflow_model, signature, input_example)`` writes in its flavour's format; it is logged
        as the run's model and registered as a new version of ``model_name``. ``features``: rows of the model's
        input columns, the first ``EXAMPLE_ROWS`` of them its input example, its signature inferred from them.

        Through the explicit client: MLflow's ``start_run`` and ``<flavor>.log_model`` work on the process-wide
        tracking URI, so the run, the logged model and the version are created here step by step."""
        from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
        from mlflow.models import Model, infer_signature
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_LOGGED_ARTIFACTS

        example = features.head(EXAMPLE_ROWS)
        signature = infer_signature(example, predict(example))
        with self._asking(f"log a training run of {model_name}"):
            client = self.client()
            run = client.create_run(self._experiment_id(client, model_name), tags={**tags, **_code_version()})
            run_id = run.info.run_id
            try:
                # the tables and figures in one folder, logged at once: the files ``log_table`` and ``log_figure``
                # write, and the tag by which MLflow's UI lists the tables (one call for each was a list of the
                # run's artifacts, a read of the run and a tag each)
                with tempfile.TemporaryDirectory() as folder:
                    for name, table in (tables or {}).items():
                        table.to_json(Path(folder) / f"{name}.json", orient="split", index=False, date_format="iso")
                    for name, figure in (figures or {}).items():
                        figure.savefig(Path(folder) / f"{name}.png")
                    if tables or figures:
                        client.log_artifacts(run_id, folder)
                listed = [{"path": f"{name}.json", "type": "table"} for name in tables or {}]
                now = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()],
                    tags=[RunTag(MLFLOW_LOGGED_ARTIFACTS, json.dumps(listed))] if listed else [],
                )
                inputs = [
                    DatasetInput(_dataset_entity(frame, name), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
                    for context, (frame, name) in (datasets or {}).items()
                ]
                if inputs:
                    client.log_inputs(run_id, datasets=inputs)
                logged = client.create_logged_model(
                    run.info.experiment_id,
                    name="model",
                    source_run_id=run_id,
                    params={k: str(v) for k, v in params.items()},
                )
                try:
                    with tempfile.TemporaryDirectory() as folder:
                        path = Path(folder) / "model"
                        model = Model(
                            artifact_path=logged.artifact_location,
                            model_uuid=logged.model_id,
                            run_id=run_id,
                            model_id=logged.model_id,
                        )
                        save_model(path, model, signature, example)
                        client.log_model_artifacts(logged.model_id, str(path))
                except BaseException:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
                    raise
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
                client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
                self._register(client, model_name)
                # the source is where the files are, not ``models:/<model id>``: MLflow's sqlite registry resolves
                # that through the process-wide tracking URI
                version = client.create_model_version(
                    model_name,
                    logged.artifact_location,
                    run_id=run_id,
                    tags={key: tags[key] for key in ("policy", "policy_kind", "policy_sha256") if key in tags},
                    model_id=logged.model_id,
                )
            except BaseException:
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
        return ModelVersionRef(model_name, int(version.version), run_id)

    @staticmethod
    def _register(client, model_name: str) -> None:
        """The registered model ``model_name``, created the first time."""
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

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

        ``datasets``: {context: (frame, name)} logged as MLflow dataset inputs (``_dataset_entity``);
        ``figures``: {file name: matplotlib figure}; the code version is tagged."""
        import lightgbm
        import mlflow.lightgbm

        from assets.logic.policies import LEARNED

        ref = self._log_version(
            model_name,
            lambda path, mlflow_model, signature, example: mlflow.lightgbm.save_model(
                booster,
                path,
                mlflow_model=mlflow_model,
                signature=signature,
                input_example=example,
                pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"pandas=={pd.__version__}"],
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

        from assets.logic.policies import RULE

        digest = policy.sha256()  # hex digits and a catalogue model name: nothing from a user in the filter
        with self._asking(f"look for {policy.name} in {model_name}"):
            found = self.client().search_model_versions(f"name = '{model_name}' and tags.policy_sha256 = '{digest}'")
        if found:
            first = min(found, key=lambda mv: int(mv.version))
            return ModelVersionRef(model_name, int(first.version), first.run_id)
        import mlflow.pyfunc

        return self._log_version(
            model_name,
            lambda path, mlflow_model, signature, example: mlflow.pyfunc.save_model(
                path,
                python_model=str(Path(__file__).with_name("rule_model.py")),  # models from code
                model_config=policy.config(),
                mlflow_model=mlflow_model,
                signature=signature,
                input_example=example,
                pip_requirements=[f"numpy=={np.__version__}", f"pandas=={pd.__version__}"],
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
        with self._asking(f"move alias {alias!r} of {ref.name}"):
            client = self.client()
            client.set_registered_model_alias(ref.name, alias, str(ref.version))
            client.set_model_version_tag(ref.name, str(ref.version), f"{alias}_reason", reason)

    def annotate(self, ref: ModelVersionRef, description: str, tags: dict[str, str]) -> None:
        """Write a decision about a version where the MLflow UI shows it: its description and tags."""
        with self._asking(f"annotate {ref.name} version {ref.version}"):
            client = self.client()
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
        with self._asking(f"list the versions of {model_name}"):
            client = self.client()
            found = sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda mv: int(mv.version))
        refs = [ModelVersionRef(model_name, int(mv.version), mv.run_id) for mv in found]
        return [(ref, self.run_tags(ref)) for ref in refs]

    def run_tags(self, ref: ModelVersionRef) -> dict[str, str]:
        with self._asking(f"read run {ref.run_id}"):
            return dict(self.client().get_run(ref.run_id).data.tags)

    def load_policy(self, ref: ModelVersionRef):
        """The version's model: a LightGBM booster, the ``RulePolicy`` of a rule version (both score with
        ``predict`` and name their inputs with ``feature_name``), or another learned model logged as a pyfunc whose
        Python model holds it as ``policy`` (the GRU), copied into a temporary folder and loaded from there."""
        import mlflow.artifacts
        import mlflow.lightgbm
        import mlflow.pyfunc

        from assets.logic.policies import LEARNED, RULE

        tags = self.run_tags(ref)  # versions logged before rules were policies: learned boosters
        uri = self.resolved_tracking_uri()
        with self._asking(f"load {ref.uri}"), tempfile.TemporaryDirectory() as folder:
            # where the version's files are, asked of this client: a ``models:/`` URI is resolved through
            # the process-wide registry URI
            files = self.client().get_model_version_download_uri(ref.name, str(ref.version))
            path = mlflow.artifacts.download_artifacts(files, dst_path=folder, tracking_uri=uri, registry_uri=uri)
            if tags.get("policy_kind", LEARNED) == RULE or tags.get("policy", "lightgbm") != "lightgbm":
                return mlflow.pyfunc.load_model(path).unwrap_python_model().policy  # a rule, or the GRU
            return mlflow.lightgbm.load_model(path)
