"""Recommender models behind one interface, so evaluate and publish never need to know a model's kind."""

from tasks.models.base import Recommender, UserBatch, load_recommender

__all__ = ["Recommender", "UserBatch", "load_recommender"]
