"""The stages of `make bench`; each module has `run(ctx) -> Result`. See bench/run.py."""
