"""The contract and its configuration: the method interface, the registries, YAML profiles and
dataset cards, experiment files, errors."""
