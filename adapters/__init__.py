"""Adapters: one package per external system (vSphere, libvirt, HAProxy, RFC 2136 DNS,
qemu-img/qemu-nbd, probes) plus the staging file system. They import the domain (cutover)
only, never activities, workflows or workers; activities drive them."""
