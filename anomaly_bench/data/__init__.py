"""Data: the in-memory dataset type, format loaders, the phantom, splits and duplicate detection."""

from anomaly_bench.data.records import ImageDataset  # noqa: F401
