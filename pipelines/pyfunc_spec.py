"""The models-from-code file of fsnn's MLflow Model (logged as the pyfunc flavor's code).

MLflow runs this file when the model is loaded: it names the pyfunc class of the *installed*
fsnn, so loading unpickles nothing; the weights are the model's ``artifacts/spec`` folder
(``spec.json`` + ``weights.safetensors``), read by :func:`fsnn.platform.spec.load_spec`.
"""

from mlflow.models import set_model

from fsnn.pipelines.mlflow_model import SpecModel

set_model(SpecModel())
