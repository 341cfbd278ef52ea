"""Dataset format loaders; each module registers its loaders with @register_format."""
