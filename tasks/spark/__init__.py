"""Spark for `engine: spark`: its session, and build_features' tables computed and written by Spark."""
