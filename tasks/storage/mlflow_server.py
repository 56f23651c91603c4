"""The app our MLflow tracking server runs (`mlflow server --app-name recsys`): MLflow's own, with every ORM
mapper configured before the first request, so that MLflow's run page never fails in a fresh server.

MLflow 3.17's GraphQL handler (the run page's first query) imports `mlflow.server.auth` on every call, for its
auth middleware. The first call in a worker defines the auth tables' mappers while other threads serve REST
queries; a query that configures mappers in between finds `SqlUser` without `SqlUserRoleAssignment`, and
SQLAlchemy marks that mapper failed for the life of the worker: every run page then reads "Can't load run
details. One or more mappers failed to initialize". Importing the same module and configuring the mappers
once, before uvicorn serves, closes that window. (Compose's server runs `basic-auth`, which imports it first.)"""

from __future__ import annotations

import contextlib


def create_app():
    """MLflow's FastAPI app, its mappers configured (uvicorn calls this in each worker: `--factory`)."""
    from sqlalchemy.orm import configure_mappers

    # The GraphQL handler's own import. Without the `auth` extra (Flask-WTF) it raises ImportError after its
    # table models are loaded, which is all that matters here, and the handler swallows that error too.
    with contextlib.suppress(ImportError):
        import mlflow.server.auth  # noqa: F401
    from mlflow.server.fastapi_app import app

    configure_mappers()
    return app
