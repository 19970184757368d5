"""The vSphere source adapter: the only package that imports pyvmomi."""
