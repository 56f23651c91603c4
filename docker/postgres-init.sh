#!/bin/sh
# Run once by the postgres image on an empty data volume: one owner and one database each for Airflow's
# metadata, MLflow's store and the nightly tables, all with the password in POSTGRES_PASSWORD.
set -eu
for name in airflow mlflow recsys; do
  psql -v ON_ERROR_STOP=1 -U postgres -c "CREATE ROLE $name LOGIN PASSWORD '$POSTGRES_PASSWORD'"
done
psql -v ON_ERROR_STOP=1 -U postgres -c "CREATE DATABASE airflow OWNER airflow"
psql -v ON_ERROR_STOP=1 -U postgres -c "CREATE DATABASE mlflow OWNER mlflow"
psql -v ON_ERROR_STOP=1 -U postgres -c "CREATE DATABASE warehouse OWNER recsys"
