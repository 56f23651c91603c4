"""The MLflow pyfunc face of any project recommender: user ids and histories in, top items out."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from tasks.models.base import load_recommender

ARTIFACT_KEY = "recommender"
SERVING_TOP_K = 10


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow's view of any project recommender: user ids and histories in, top items out."""

    def load_context(self, context) -> None:
        self.recommender = load_recommender(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from tasks.recommend import recommend

        lists = model_input.assign(history=model_input["history"].str.split())
        history = lists.explode("history").dropna().rename(columns={"history": "item_id"})
        recs = recommend(self.recommender, model_input["user_id"].to_numpy(dtype=object),
                         history.assign(weight=1.0), history.iloc[0:0], None, SERVING_TOP_K, 1024, "pyfunc",
                         user_features=lists)
        return recs


def logged_pyfunc(model_dir: Path, example: pd.DataFrame) -> dict:
    """The `log_and_register` arguments of a saved recommender: a fresh wrapper, its folder as the artifact,
    and its answer to `example` (for the signature)."""
    loaded = RecommenderPyfunc()
    loaded.recommender = load_recommender(model_dir)
    return {"python_model": RecommenderPyfunc(), "artifacts": {ARTIFACT_KEY: str(model_dir)},
            "example": example, "example_output": loaded.predict(None, example)}
