"""The file MLflow runs to rebuild the model (models from code): nothing is unpickled."""

from mlflow.models import set_model

from fedrisk.serving import RiskModel

set_model(RiskModel())
