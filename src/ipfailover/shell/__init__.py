"""The asyncio shells' parts: runtime, UDP, netlink, scripts, the control socket, sd_notify,
metrics.
"""
