"""Storage: what moves files and rows, below the models: raw store, lake writes, warehouse, model registry."""
