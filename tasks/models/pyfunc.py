"""The MLflow pyfunc face of any project recommender: the night's lists, online.

A registered version carries, beside the model, the inputs its night was published with
(`tasks.models.recommend.ServingInputs`: each user's past, the exclusion rule's pairs, the allowed items, the
catalogue, K), so `predict` answers a known user with the rows the nightly table holds for that night. A
request may pass a `history` (item ids, most recent first) to score a visitor or a fresher session, and an
`exclude` list (the basket, say) to ban on top of the rule.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema

from tasks.models.base import load_recommender

ARTIFACT_KEY, INPUTS_KEY = "recommender", "serving_inputs"
# `model_config` of a load that wants the recommender alone: publish_shard reads its own shard's inputs, and
# the night's, read whole, took 2.3-3.9 s a shard at L. Versions logged before the key existed load whole.
RECOMMENDER_ONLY = {INPUTS_KEY: False}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, "user_id"), ColSpec(Array(DataType.string), "history", required=False),
                   ColSpec(Array(DataType.string), "exclude", required=False)]),
    outputs=Schema([ColSpec(DataType.string, "user_id"), ColSpec(DataType.integer, "rank"),
                    ColSpec(DataType.string, "item_id"), ColSpec(DataType.double, "score")]))


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """user_id (and optionally history, exclude) in; (user_id, rank, item_id, score) out, K rows a user."""

    def load_context(self, context) -> None:
        from tasks.models.recommend import ServingInputs

        recommender = load_recommender(Path(context.artifacts[ARTIFACT_KEY]))
        if (context.model_config or {}).get(INPUTS_KEY, True):
            self.use(recommender, ServingInputs.load(Path(context.artifacts[INPUTS_KEY])))
        else:  # loaded for its recommender alone: `predict` cannot answer
            self.recommender = recommender

    def use(self, recommender, inputs) -> None:
        self.recommender, self.inputs = recommender, inputs
        self.model = recommender.for_catalog(inputs.items)  # as publish_shard scores

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from tasks.models.recommend import recommendation_frame

        request = model_input.assign(user_id=model_input["user_id"].astype(str))
        inputs = self.inputs.with_request(request)
        frames = list(inputs.recommend(self.model, request["user_id"].drop_duplicates().to_numpy(), 1024, "pyfunc"))
        return pd.concat(frames, ignore_index=True) if frames else recommendation_frame([], [], [], [])


def logged_pyfunc(model_dir: Path, inputs, inputs_dir: Path, example: pd.DataFrame) -> dict:
    """The `log_and_register` arguments of a saved recommender and its night's inputs (saved to `inputs_dir`)."""
    inputs.save(inputs_dir)
    return {"python_model": RecommenderPyfunc(), "artifacts": {ARTIFACT_KEY: str(model_dir), INPUTS_KEY: str(inputs_dir)},
            "example": example, "signature": SIGNATURE, "model_config": {INPUTS_KEY: True}}
