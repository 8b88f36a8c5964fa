"""ipfailover: IP failover for Linux in the manner of Mac OS X Server's IP Failover."""

__version__ = "0.1.0"
