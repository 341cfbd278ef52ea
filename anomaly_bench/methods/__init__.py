"""Built-in methods, one family per folder (``torch_model``, ``loss``, ``method``) or, for the anomalib wrappers,
per module; each registers itself with @register_method."""
