"""Kubernetes API access: the client layer (`client`) and the informer (`watch`)."""
