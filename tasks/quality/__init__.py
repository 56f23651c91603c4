"""Quality: the statistics that decide what is served."""
