"""GB/T 28181 access: devices, NVRs and platforms that register to the hub over SIP, and the
media (RTP carrying MPEG-PS) their channels send. See README.md beside this file."""
