"""The failover lab: namespaces, real daemons, probes, faults, fuzz and reports."""
