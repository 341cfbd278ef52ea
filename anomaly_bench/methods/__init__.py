"""Built-in methods, one family per module; each registers itself with @register_method."""
