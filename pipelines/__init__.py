"""How the steps compose into the nightly pipeline; runnable without Airflow."""
