"""(to be written) The only module that imports matplotlib."""
