"""Fine-tuning a detector on the platform's own real videos (``python -m worker train``)."""
