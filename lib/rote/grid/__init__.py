"""Many runs at once: the sweep over a grid on Dask, the scorecard of its verdicts, the THR regime map."""
