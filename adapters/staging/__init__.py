"""The staging dir on the conversion host: its namespace (layout) and the warm copy engine
that fills it (copy)."""
