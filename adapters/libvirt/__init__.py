"""The KVM target adapter: the only package that imports libvirt."""
