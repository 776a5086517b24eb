"""plinth's model-agnostic FastAPI service."""
