"""(to be written) The analyser."""
