from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server on loopback, shared by the session's tests."""
    from servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def docs_site(tmp_path_factory: pytest.TempPathFactory):
    """The documentation site, built once (tests/docsite.py); the folder holding docs/ and
    site/."""
    from docsite import build_site

    return build_site(tmp_path_factory.mktemp("docs"))
