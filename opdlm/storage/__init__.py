"""Object storage for datasets, checkpoints and models (boto3, imported lazily)."""
