import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.models import load_recommender
from tasks.models.tower_inputs import encode, first_touches, histories_before_each_event
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tests.conftest import DS


def test_history_of_an_event_holds_only_earlier_items():
    events = pd.DataFrame({"event_id": list("12345"), "user_id": list("aabab"), "item_id": list("xyzwq"),
                           "event_ts": pd.to_datetime([1, 2, 3, 4, 5])})
    assert as_lists(*histories_before_each_event(events, 2)) == [[], ["x"], [], ["y", "x"], ["z"]]


def as_lists(histories: np.ndarray, items: np.ndarray) -> list[list[str]]:
    return [[items[at - 1] for at in row if at] for row in histories]


def test_a_visit_funnel_is_one_touch_with_its_strongest_event():
    events = pd.DataFrame({"event_id": list("12345"), "user_id": list("aaaab"), "item_id": list("xxyxx"),
                           "event_type": ["view", "click", "view", "purchase", "view"],
                           "weight": [1.0, 2.0, 1.0, 8.0, 1.0], "event_ts": pd.to_datetime([1, 2, 3, 4, 5])})
    touches = first_touches(events)
    assert touches[["event_id", "user_id", "item_id", "event_type", "weight"]].values.tolist() == [
        ["1", "a", "x", "purchase", 8.0], ["3", "a", "y", "view", 1.0], ["5", "b", "x", "view", 1.0]]
    # Histories over touches are distinct items: the click of x no longer has x's view before it.
    assert as_lists(*histories_before_each_event(touches, 3)) == [[], ["x"], []]


def test_first_touches_equal_a_group_by_on_the_id_strings_with_ties_and_repeats():
    rng = np.random.default_rng(3)
    kinds = np.array(["view", "click", "purchase"])
    kind = rng.integers(0, 3, 400)
    events = pd.DataFrame({"event_id": pd.array([f"e{i:03d}" for i in rng.permutation(400)], dtype="str"),
                           "user_id": pd.array([f"u{i}" for i in rng.integers(0, 12, 400)], dtype="str"),
                           "item_id": pd.array([f"i{i}" for i in rng.integers(0, 9, 400)], dtype="str"),
                           "event_type": pd.array(kinds[kind], dtype="str"), "weight": np.array([1.0, 2.0, 8.0])[kind],
                           "event_ts": pd.to_datetime(rng.integers(0, 50, 400), unit="s", utc=True)})
    ordered = events.sort_values(["event_ts", "event_id"], kind="stable").reset_index(drop=True)
    keys = ["user_id", "item_id"]  # the definition: the first touch, with the first of its strongest events
    strongest = ordered.loc[ordered.groupby(keys, sort=False)["weight"].idxmax(), [*keys, "event_type", "weight"]]
    expected = ordered.drop(columns=["event_type", "weight"]).drop_duplicates(keys).merge(strongest, on=keys)
    pd.testing.assert_frame_equal(first_touches(events), expected)


def test_each_events_history_is_its_users_previous_items_newest_first_whatever_the_row_order():
    rng = np.random.default_rng(4)
    events = pd.DataFrame({"event_id": pd.array([f"e{i:03d}" for i in rng.permutation(300)], dtype="str"),
                           "user_id": pd.array([f"u{i}" for i in rng.integers(0, 8, 300)], dtype="str"),
                           "item_id": pd.array([f"i{i}" for i in rng.integers(0, 20, 300)], dtype="str"),
                           "event_ts": pd.to_datetime(rng.integers(0, 30, 300), unit="s", utc=True)})
    moment = list(zip(events["event_ts"], events["event_id"], strict=True))
    expected = [[events["item_id"][j] for j in sorted(
        (j for j in range(300) if events["user_id"][j] == events["user_id"][i] and moment[j] < moment[i]),
        key=lambda j: moment[j], reverse=True)][:4] for i in range(300)]
    assert as_lists(*histories_before_each_event(events, 4)) == expected


def test_random_negatives_follow_the_batch_on_one_probability_scale():
    from tasks.models.two_tower import random_negatives, tf

    catalog = {"item_id": tf.constant(list("abcdefgh")), "price": tf.constant(np.arange(8, dtype=np.float32))}
    drawn, probability = random_negatives(catalog, 3, batch_size=2, seed=1)
    ids = drawn["item_id"].numpy().astype(str)
    assert len(ids) == 3 and set(ids) <= set("abcdefgh")
    # Each drawn item keeps its own inputs: the price of catalogue item "a"+n is n.
    assert [ord(i) - ord("a") for i in ids] == drawn["price"].numpy().tolist()
    # A batch of 2 holds an in-batch item 2p times; 3 uniform draws from 8 hold one 3/8 times: p = 3/(8*2).
    np.testing.assert_allclose(probability.numpy(), [3 / 16, 3 / 16, 3 / 16])


def test_extra_negatives_join_every_querys_softmax():
    """The uniform draws are embedded by the item tower and scored against every query: the loss grows with
    them (more negatives in each softmax), and evaluation (training=False) leaves them out."""
    from tasks.models.tower_inputs import TowerSpec
    from tasks.models.two_tower import Tower, TwoTowerTrainer, tf

    users, items = [f"u{i}" for i in range(6)], [f"i{i}" for i in range(12)]

    def loss(extra: int, training: bool) -> float:
        tf.keras.utils.set_random_seed(3)
        query, candidate = Tower(TowerSpec("user_id", users), 8), Tower(TowerSpec("item_id", items), 8)
        batch = ({"query": query.indices({"user_id": tf.constant(users)}),
                  "candidate": candidate.indices({"item_id": tf.constant(items[:6])})}, tf.ones(6), tf.fill([6], 1 / 6))
        trainer = TwoTowerTrainer(query, candidate, 0.1, candidate.rows_of({"item_id": np.array(items, dtype=object)}),
                                  extra)
        return float(trainer.compute_loss(batch, training=training))

    assert loss(8, training=True) > loss(0, training=True)
    assert loss(8, training=False) == loss(0, training=False)


def test_the_examples_stream_holds_every_example_once_an_epoch_in_full_batches_shuffled_anew(tmp_path):
    """Python reads and shuffles windows of 8 batches, TensorFlow cuts them and gathers each example's user and
    item rows: every example once an epoch with its own rows, full batches but the last, a new order each epoch
    (and the file's order unshuffled)."""
    from tasks.models.tower_inputs import as_list_column
    from tasks.models.two_tower import examples_dataset

    count, batch_size = 1_000, 16  # 7 windows of 8 batches and a short one, across Parquet record batches
    rng = np.random.default_rng(0)
    user_row, item_row = rng.integers(0, 50, count).astype(np.int32), rng.integers(0, 30, count).astype(np.int32)
    history = rng.integers(0, 30, (count, 4)).astype(np.int32)
    pd.DataFrame({"user_row": user_row, "item_row": item_row, "history": as_list_column(history, pd.RangeIndex(count)),
                  "weight": np.arange(count, dtype=np.float64), "probability": np.full(count, 0.5)}).to_parquet(
        tmp_path / "examples.parquet", index=False, row_group_size=300)
    users = {"user_id": np.arange(50) * 10, "age": np.arange(50, dtype=np.float32) / 2}
    items = {"item_id": np.arange(30) * 100, "tags": np.arange(90).reshape(30, 3)}
    shuffled, in_order = (examples_dataset(tmp_path / "examples.parquet", users, items, batch_size, shuffle, seed=1,
                                           sized=True) for shuffle in (True, False))
    assert int(shuffled.cardinality()) == -(-count // batch_size)
    assert not shuffled.options().autotune.enabled  # its tuning thread held epochs back where fit let go of them
    orders = []
    for data in (shuffled, shuffled, in_order):  # two epochs, then the file's order
        order, sizes = [], []
        for inputs, weight, probability in data:
            example = weight.numpy().astype(int)  # the weight column numbers the examples
            order.extend(example)
            sizes.append(len(example))
            query, candidate = inputs["query"], inputs["candidate"]
            np.testing.assert_array_equal(query["user_id"].numpy(), user_row[example] * 10)
            np.testing.assert_array_equal(query["age"].numpy(), users["age"][user_row[example]])
            np.testing.assert_array_equal(query["history"].numpy(), history[example])
            np.testing.assert_array_equal(candidate["tags"].numpy(), items["tags"][item_row[example]])
            assert probability.dtype == np.float32 and (probability.numpy() == 0.5).all()
        assert sorted(order) == list(range(count)) and sizes[:-1] == [batch_size] * (len(sizes) - 1)
        orders.append(order)
    assert orders[0] != orders[1] and orders[2] == list(range(count))


def test_lists_pool_the_mean_of_their_real_entries():
    """Only the entries that are not padding are looked up; a row of padding pools to zeros."""
    from tasks.models.two_tower import Tower, tf

    codes = np.array([[3, 1, 0, 0], [0, 0, 0, 0], [2, 2, 2, 5]])
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    row, entries = Tower._entries(tf.constant(codes))
    np.testing.assert_array_equal(entries.numpy(), [3, 1, 2, 2, 2, 5])
    pooled = Tower._mean_by_row(tf.gather(table, entries), row, tf.constant(codes)).numpy()
    np.testing.assert_allclose(pooled, [(table[3] + table[1]) / 2, [0, 0], (3 * table[2] + table[5]) / 4])


def test_a_training_example_reaches_the_towers_as_its_serving_inputs_would(pipeline_run):
    """Training feeds the towers numbers gathered from tables computed once; the serving signature takes the
    user's feature row with the item ids before the event, most recent first, and the item's row. Both must
    give the same rows, for a user the users table lacks too."""
    import tensorflow as tf

    from tasks.models.tower_inputs import history_attributes, list_column_matrix, tower_specs
    from tasks.models.two_tower import Tower, retrieval_examples, to_tensors

    config, _ = pipeline_run
    rules = config.train_retrieval
    features = FeatureSet.read(AddressBook.from_config(config).features(DS))
    query_spec, candidate_spec = tower_specs(features, config.data, rules.history_length)
    users, items = features.train_users, features.train_items
    query = Tower(query_spec, rules.embedding_dim, use_id=True, history_attributes=history_attributes(items, candidate_spec))
    candidate = Tower(candidate_spec, rules.embedding_dim)
    train = first_touches(features.train_interactions)
    missing_user = train["user_id"].value_counts().index[0]  # the busiest user, left out of the users table
    examples, user_rows, item_rows = retrieval_examples(train, query, candidate, users[users["user_id"] != missing_user],
                                                        items)
    sample = pd.concat([examples.sample(150, random_state=0),
                        examples[train.loc[examples.index, "user_id"] == missing_user].head(5)])
    touches = train.sort_values(["user_id", "event_ts", "event_id"])
    serving_rows = []
    for at in sample.index:
        event = train.loc[at]
        before = touches[(touches["user_id"] == event["user_id"]) &
                         ((touches["event_ts"] < event["event_ts"]) |
                          ((touches["event_ts"] == event["event_ts"]) & (touches["event_id"] < event["event_id"])))]
        serving_rows.append({"user_id": event["user_id"], "item_id": event["item_id"],
                             "history": before["item_id"].tolist()[::-1][:rules.history_length]})
    serving = pd.DataFrame(serving_rows)
    known_users = users[users["user_id"] != missing_user].drop(columns="history")  # its history as of the cutoff
    user_features = serving[["user_id", "history"]].merge(known_users, on="user_id", how="left")
    item_features = serving[["item_id"]].merge(items, on="item_id", how="left")
    expected_query = query.indices(to_tensors(encode(user_features, query_spec)))
    expected_candidate = candidate.indices(to_tensors(encode(item_features, candidate_spec)))
    got_query = {name: values[sample["user_row"].to_numpy()] for name, values in user_rows.items()}
    got_query["history"] = list_column_matrix(pa.array(sample["history"].array))
    got_candidate = {name: values[sample["item_row"].to_numpy()] for name, values in item_rows.items()}
    for expected, got in ((expected_query, got_query), (expected_candidate, got_candidate)):
        assert expected.keys() == got.keys()
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values.numpy(), err_msg=name)
    assert (got_query["history"][:, 0] > 0).any() and (got_query["history"][:, -1] == 0).any()
    np.testing.assert_allclose(query.embed({k: tf.constant(v) for k, v in got_query.items()}).numpy(),
                               query(to_tensors(encode(user_features, query_spec))).numpy(), rtol=1e-6, atol=1e-6)


def test_two_tower_beats_popularity_on_recall(pipeline_run):
    config, _ = pipeline_run
    table = pd.read_parquet(AddressBook.from_config(config).evaluation(DS) / "evaluation.parquet")
    overall = table[table["segment"] == "all"].set_index("model")
    k = max(config.evaluate.ks)
    assert overall.loc["two_tower", f"recall_at_{k}"] > 1.15 * overall.loc["popularity", f"recall_at_{k}"]


def test_exported_index_and_towers_reload_and_agree(pipeline_run):
    import tensorflow as tf

    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    folder = book.model(DS, "two_tower")
    model = load_recommender(folder)
    users = FeatureSet.read(book.features(DS)).train_users.head(5)
    ours = model.embed_users(users) @ model.item_embeddings.T
    inputs = {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in encode(users, model.specs[0]).items()}
    index = tf.saved_model.load(str(folder / "index"))  # kept referenced: its variables die with it
    index_scores, index_ids = index.serve(inputs)
    top = np.argsort(-ours, axis=1)[:, :10]
    np.testing.assert_allclose(index_scores.numpy()[:, :10], np.take_along_axis(ours, top, axis=1), rtol=1e-4, atol=1e-5)
    assert (index_ids.numpy()[:, 0].astype(str) == model.item_ids[top[:, 0]].astype(str)).all()
    embeddings = pd.read_parquet(folder / "item_embeddings.parquet")
    np.testing.assert_allclose(np.stack(embeddings["embedding"]), model.item_embeddings)


def test_a_large_catalogue_is_grouped_and_retrieves_the_exact_lists(pipeline_run, monkeypatch):
    import scipy.sparse as sp

    from tasks.models import two_tower
    from tasks.topk import ClusteredItems, exact_top_k

    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    model = load_recommender(book.model(DS, "two_tower"))
    users = FeatureSet.read(book.features(DS)).train_users.head(300)
    queries = model.embed_users(users)
    allowed = np.arange(len(model.item_ids)) % 7 != 0
    banned = sp.random(len(users), len(model.item_ids), density=0.01, format="csr", random_state=0)
    monkeypatch.setattr(two_tower, "CLUSTERED_FROM", 100)  # the S shop's catalogue counts as large

    got = model.retrieve(queries, 50, banned, allowed)

    assert isinstance(model._allowed[2], ClusteredItems)
    columns = np.flatnonzero(allowed)
    want = exact_top_k(queries, model.item_embeddings[columns], 50, banned[:, columns])
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    assert np.mean(got.ids == columns[want.ids]) > 0.99  # only float32 near ties may swap places
    assert allowed[got.ids].all() and not banned[np.arange(len(users))[:, None], got.ids].toarray().any()


def test_new_items_get_embeddings_from_their_features(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    model = load_recommender(book.model(DS, "two_tower"))
    items = FeatureSet.read(book.features(DS)).serving_items
    unseen = items.assign(item_id="brand-new-" + items["item_id"]).head(3)
    widened = model.for_catalog(pd.concat([items, unseen], ignore_index=True))
    assert len(widened.item_ids) == len(items) + 3
    vectors = widened.item_embeddings[-3:]
    assert np.isfinite(vectors).all() and (np.abs(vectors).sum(axis=1) > 0).all()


def test_a_warm_start_carries_the_twins_weights_and_gives_a_new_id_a_fresh_row(pipeline_run):
    from dataclasses import replace

    import tensorflow as tf

    from tasks.models.tower_inputs import history_attributes, tower_specs
    from tasks.models.two_tower import Tower, saved_towers, warm_start_towers

    config, _ = pipeline_run
    rules, twin = config.train_retrieval, AddressBook.from_config(config).model(DS, "two_tower")
    features = FeatureSet.read(AddressBook.from_config(config).features(DS)).through_ds()
    query_spec, candidate_spec = tower_specs(features, config.data, rules.history_length)
    candidate_spec = replace(candidate_spec, id_vocabulary=[*candidate_spec.id_vocabulary, "i_new"])
    query = Tower(query_spec, rules.embedding_dim, normalize=rules.normalize, use_id=rules.user_id_embedding,
                  history_attributes=history_attributes(features.train_items, candidate_spec))
    candidate = Tower(candidate_spec, rules.embedding_dim, normalize=rules.normalize)
    warm_start_towers(query, candidate, twin, rules)
    old_query, old_candidate = saved_towers(twin, rules)
    for new, old, layer in ((query, old_query, "history"), (candidate, old_candidate, None)):
        np.testing.assert_array_equal(new.hidden.kernel.numpy(), old.hidden.kernel.numpy())
        np.testing.assert_array_equal(new.output_layer.kernel.numpy(), old.output_layer.kernel.numpy())
        pairs = [(new.id_lookup, new.id_embedding, old.id_lookup, old.id_embedding)] if new.use_id else []
        if layer:  # the user tower's history items
            pairs.append((new.lookups[layer], new.embeddings[layer], old.lookups[layer], old.embeddings[layer]))
        for new_lookup, new_rows, old_lookup, old_rows in pairs:
            old_tokens = set(old_lookup.get_vocabulary())
            known = [t for t in new_lookup.get_vocabulary() if t in old_tokens]
            assert len(known) > 0.9 * new_lookup.vocabulary_size()
            np.testing.assert_array_equal(tf.gather(new_rows.embeddings, new_lookup(tf.constant(known))).numpy(),
                                          tf.gather(old_rows.embeddings, old_lookup(tf.constant(known))).numpy())
    assert "i_new" not in old_candidate.id_lookup.get_vocabulary()
    fresh = candidate.id_embedding.embeddings.numpy()[candidate.id_lookup(tf.constant(["i_new"])).numpy()[0]]
    assert not np.isclose(old_candidate.id_embedding.embeddings.numpy(), fresh).all(axis=1).any()
