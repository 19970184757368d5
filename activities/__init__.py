"""Activities: everything that touches the world, one module per external system."""
