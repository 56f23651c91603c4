from datetime import date

import pandas as pd

from tasks.sources.generate import ShopSpec, generate_shop

SPEC = ShopSpec(days=5, users=300, items=150, events=6_000, seed=3, end=date(2026, 1, 5))


def test_same_seed_gives_the_same_shop():
    for a, b in zip(generate_shop(SPEC), generate_shop(SPEC), strict=True):
        pd.testing.assert_frame_equal(a.events, b.events)
        pd.testing.assert_frame_equal(a.items, b.items)


def test_shop_has_a_funnel_and_users_concentrate_on_few_categories():
    days = list(generate_shop(SPEC))
    events = pd.concat([d.events for d in days], ignore_index=True)
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    assert events["event_id"].is_unique
    items = days[-1].items.set_index("item_id")
    per_user = events.assign(category=events["item_id"].map(items["category"])).groupby("user_id")["category"]
    top_share = per_user.agg(lambda c: c.value_counts(normalize=True).iloc[0])[per_user.size() >= 10]
    assert top_share.mean() > 0.3  # 20 categories: a uniform shopper's top share would be near 0.1-0.2


def test_items_and_users_arrive_over_the_days():
    days = list(generate_shop(ShopSpec(days=10, users=300, items=150, events=3_000, seed=3)))
    assert len(days[0].items) < len(days[-1].items)
    assert len(days[0].users) < len(days[-1].users)
