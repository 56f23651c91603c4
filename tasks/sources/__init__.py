"""Sources: what lands raw data in the landing zone: the synthetic shop generator and the importers of public data sets."""
