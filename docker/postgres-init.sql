-- Runs once, when the Postgres volume is first initialised: the Prefect server uses the
-- database POSTGRES_DB (prefect) creates, the MLflow tracking server this one.
CREATE DATABASE mlflow OWNER insight;
