"""Transient failures (a warehouse file locked by another process, an MLflow registry that does not answer):
inside a Dagster step they become retries with exponential backoff, then a clear failure; outside Dagster
(the CLI) they are raised at once."""

from dagster import ConfigurableResource, DagsterInvariantViolationError, OpExecutionContext, RetryRequested


def step_context() -> OpExecutionContext | None:
    try:
        return OpExecutionContext.get()
    except DagsterInvariantViolationError:
        return None


class RetriesTransientFailures(ConfigurableResource):
    """A resource whose transient failures Dagster retries: ``transient_retries`` more attempts of the step,
    ``retry_delay_seconds`` before the first, doubling after each."""

    transient_retries: int = 3
    retry_delay_seconds: float = 15.0

    def transient(self, error: Exception) -> Exception:
        """What to raise for ``error``: a ``RetryRequested`` while the step has attempts left, else ``error``
        saying how many attempts were made. Use as ``raise self.transient(error) from cause``."""
        context = step_context()
        if context is None:
            return error
        attempt = context.retry_number
        if attempt >= self.transient_retries:
            error.args = (f"{error} (gave up after {attempt + 1} attempts of step {context.op.name})", *error.args[1:])
            return error
        wait = self.retry_delay_seconds * 2**attempt
        context.log.warning(
            f"transient failure, retrying in {wait:g} s (attempt {attempt + 2} of "
            f"{self.transient_retries + 1}): {error}"
        )
        return RetryRequested(max_retries=self.transient_retries, seconds_to_wait=wait)
