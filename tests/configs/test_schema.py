from pathlib import Path

import pytest

from configs import CONFIG_DIR, ConfigError, load_config, parse_overrides


def test_default_config_loads_with_documented_defaults():
    config = load_config()
    assert config.publish.k == 100
    assert config.evaluate.ks == (10, 50, 100)
    assert config.register.primary_metric == "ndcg_at_10"


def test_set_override_is_parsed_as_yaml_and_typed():
    config = load_config(None, ["publish.k=25", "train.models=[popularity]", "paths.var=/tmp/x"])
    assert config.publish.k == 25
    assert config.train.models == ("popularity",)
    assert config.paths.var == Path("/tmp/x")


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="publsh"):
        load_config(None, ["publsh.k=3"])


def test_holdout_longer_than_lookback_is_rejected():
    with pytest.raises(ConfigError, match="holdout_days"):
        load_config(None, ["build_features.holdout_days=30", "build_features.lookback_days=10"])


def test_a_pod_cpu_that_is_no_kubernetes_quantity_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="cpu"):
        load_config(None, ["execution.default_resources.cpu=two"])
    assert load_config(None, ["execution.default_resources.cpu='2.5'"]).execution.default_resources.whole_cpus == 3


def test_unknown_event_type_in_positive_types_is_rejected():
    with pytest.raises(ConfigError, match="wishlist"):
        load_config(None, ["evaluate.positive_event_types=[wishlist]"])


def test_var_dir_environment_variable_moves_var_but_set_wins(monkeypatch):
    monkeypatch.setenv("RECSYS_VAR_DIR", "/data/recsys")
    assert load_config().paths.var == Path("/data/recsys")
    assert load_config(None, ["paths.var=/elsewhere"]).paths.var == Path("/elsewhere")


def test_profile_with_base_inherits_and_overrides(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"base: {Path(__file__).resolve().parents[2] / 'configs' / 'default.yaml'}\npublish:\n  k: 7\n")
    config = load_config(profile)
    assert config.publish.k == 7 and config.evaluate.ks == (10, 50, 100)


@pytest.mark.parametrize("name", ["retail.yaml", "movielens.yaml", "compose.yaml"])
def test_shipped_configs_validate(name):
    load_config(Path(__file__).resolve().parents[2] / "configs" / name)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["publish.k"])


def test_numeric_columns_carry_their_value_rules_and_a_dataset_replaces_them_whole():
    shop = load_config()
    assert shop.data.items.numeric == ("price",) and shop.data.items.rule("price").min == 0
    movies = load_config(CONFIG_DIR / "movielens.yaml")  # declares year, so the shop's price rule is gone
    assert movies.data.items.numeric == ("year",) and set(movies.data.items.rules) == {"year"}
    assert movies.data.items.rule("year").finite and shop.data.users.rule("age").finite  # the default rule


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://svc:" + "s3cret@db:5432/recs", "postgresql://svc@db:5432/recs"),
    ("postgresql://svc@db/recs", "postgresql://svc@db/recs"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    (None, None),
])
def test_what_mlflow_records_of_the_config_holds_no_password(url, shown):
    config = load_config(None, [f"register.tracking_uri={url or 'null'}",
                                f"warehouse.url={url if url and url.startswith('postgresql') else 'null'}"])
    logged = config.for_logging()
    assert logged["register"]["tracking_uri"] == shown
    assert "s3cret" not in str(logged)
