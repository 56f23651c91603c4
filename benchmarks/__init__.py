"""Scripts that measure the pipeline and print figures; never run by the tests."""
