"""A fake Kubernetes API server for meshgate's controller tests, and its contract tests."""
