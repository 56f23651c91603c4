"""How far the models are from the best possible on the synthetic shop: rank by the generator's own odds.

After `make demo` (or `recsys run`) on data from `recsys generate` with the default shop, run

    python -m benchmarks.ceiling [--ds D]

It regenerates the shop's hidden taste as it stood on the first held-out day, scores every held-out user
with `tasks.sources.generate.planted_scores`, evaluates that "oracle" exactly as `evaluate` evaluates the models,
and prints it beside the evaluation table, each as a ratio to popularity.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from configs import load_config
from tasks.evaluate import evaluate_model, held_out_window
from tasks.models.base import Recommender, UserBatch
from tasks.sources.generate import ShopSpec, generate_shop, planted_scores
from tasks.step_cli import configure_logging
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet

METRICS = ("ndcg_at_10", "recall_at_10", "recall_at_100")


class Oracle(Recommender):
    kind = "oracle"

    def __init__(self, item_ids: np.ndarray, catalog: pd.DataFrame, users: pd.DataFrame):
        super().__init__(item_ids, np.zeros(len(item_ids)), {})
        self.catalog, self.users = catalog, users

    def score(self, batch: UserBatch) -> np.ndarray:
        return planted_scores(self.catalog, self.users, batch.user_ids, self.item_ids)


def main(ds: Annotated[str | None, typer.Option(help="Data date; default: the shop's last day.")] = None) -> None:
    configure_logging()
    spec = ShopSpec()
    day = date.fromisoformat(ds) if ds else spec.end
    config = load_config(None)
    features = FeatureSet.read(AddressBook.from_config(config).features(day))
    window = held_out_window(features, config)
    cutoff = features.window.cutoff
    batch = next(b for b in generate_shop(spec, with_taste=True) if b.ds == cutoff)
    oracle = Oracle(features.train_items["item_id"].to_numpy(dtype=object), *batch.taste)
    ks = tuple(sorted({10, 100, *config.evaluate.ks}))
    rows = [evaluate_model(oracle, window, ks, config.evaluate.batch_size, "oracle (planted odds)")[0]]
    table = pd.read_parquet(AddressBook.from_config(config).evaluation(day) / "evaluation.parquet")
    table = pd.concat([table[table["segment"] == "all"], pd.DataFrame(rows)], ignore_index=True).set_index("model")
    shown = table[list(METRICS)].copy()
    for metric in METRICS:
        shown[f"{metric} / popularity"] = table[metric] / table.loc["popularity", metric]
    print(f"ds={day}, {int(table.loc['popularity', 'users'])} held-out users\n")
    print(shown.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    typer.run(main)
