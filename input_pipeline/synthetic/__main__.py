"""`python -m input_pipeline.synthetic`: the same command as `seedlings-synthetic`."""

from input_pipeline import synthetic

# absl's --help prints the main module's docstring: show the package's, which
# holds the usage, as `python -m` did when this was one module.
__doc__ = synthetic.__doc__

if __name__ == "__main__":
    synthetic.run()
