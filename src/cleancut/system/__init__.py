"""What cleancut needs from the Linux kernel, below every other layer: mounts, block-device
stacking (sysfs) and the ioctl numbers. The guest, the providers and the demo build on it."""
