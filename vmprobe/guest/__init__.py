"""The guest image: a two-layer initramfs (cached base + per-run keys) with the userland for the kernel's arch."""
