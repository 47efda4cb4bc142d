"""The recurrent session model as an MLflow pyfunc, logged from this file (MLflow's models from code, not a pickle):
the model's files (``GRUSessionModel.save``) are the version's artifact ``gru``, which ``load_context`` reads."""

from mlflow.models import set_model

from resources.gru_pyfunc import GRUSessionPyfunc

set_model(GRUSessionPyfunc())
