"""(to be written) Loading pretrained weights: load_weights(model, path_or_url, strict=True)."""
