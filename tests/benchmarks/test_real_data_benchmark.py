import numpy as np
import pandas as pd

from benchmarks.real_data import against_best_single


def _night(folder, per_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """A night's per-user metrics as evaluate writes them, and its overall table."""
    users = [f"u{i:03d}" for i in range(len(next(iter(per_model.values()))))]
    pd.concat([pd.DataFrame({"model": model, "user_id": users, "ndcg_at_10": values})
               for model, values in per_model.items()]).to_parquet(folder / "per_user.parquet", index=False)
    return pd.DataFrame({"ndcg_at_10": {model: values.mean() for model, values in per_model.items()}})


def test_two_stage_is_set_against_the_best_single_model_on_the_same_users(tmp_path):
    ease = np.random.default_rng(1).random(300)
    overall = _night(tmp_path, {"popularity": ease / 2, "ease": ease, "two_stage": ease * 1.25,
                                "champion": ease * 3})  # the champion's row is a recipe, not a single model

    text = against_best_single(tmp_path, overall)

    assert "best single model (ease) NDCG@10: 1.2500" in text
    assert "+25.0% against ease (90% interval +25.0% to +25.0%, 300 users)" in text


def test_without_a_two_stage_row_it_says_so(tmp_path):
    overall = _night(tmp_path, {"popularity": np.ones(10), "ease": np.ones(10)})
    assert against_best_single(tmp_path, overall).endswith("not run")
