"""A rule policy as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(frame)`` scores with the rule."""

import mlflow.pyfunc

from assets.logic.policies import RulePolicy


class RuleModel(mlflow.pyfunc.PythonModel):
    def __init__(self, policy: RulePolicy):
        self.policy = policy

    def predict(self, context, model_input, params=None):
        return self.policy.predict(model_input)
