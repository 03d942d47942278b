"""The run's record, and its one owner: the schema (as data), the DuckDB store and every
query over it, the published Parquet, the run directory's layout, the run (config, data,
seeds) and its lock, and the per-round metrics computed from the record."""
