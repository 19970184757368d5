"""Deterministic Temporal workflows. Nothing here touches the world or imports an adapter."""
