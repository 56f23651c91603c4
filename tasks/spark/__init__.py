"""Spark for `engine: spark`: its session, the raw landing zone read by Spark (validate_raw), and build_features'
tables computed and written by Spark."""
