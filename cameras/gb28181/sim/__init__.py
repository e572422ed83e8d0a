"""A GB/T 28181 device simulator (IPC or NVR): see device.py."""
