"""A rule policy as an MLflow pyfunc model, logged from this file (MLflow's models from code, not a pickle): the
rule's definition is the model's ``model_config`` (``RulePolicy.config``), so
``mlflow.pyfunc.load_model(uri).predict(frame)`` scores with the rule, and ``unwrap_python_model().policy`` is it."""

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

from assets.logic.policies import RulePolicy


class RuleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        if context.model_config:  # logged from code; one pickled by an earlier release holds its policy already
            self.policy = RulePolicy.from_config(context.model_config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.policy.predict(model_input)


set_model(RuleModel())
