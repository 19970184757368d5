"""qemu-img and qemu-nbd: image conversion and checks, block access to images, and the
pre-converted target image kept in step during the warm phase."""
