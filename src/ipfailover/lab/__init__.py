"""The failover lab: namespaces, real daemons, probes, faults, fuzz and reports.

The modules, bottom up (nothing here is imported by the package itself, so ``python -m
ipfailover.lab.probe`` and ``ipfailover.lab.mail`` start without the rest):

* ``topology`` -- the namespaces, bridges, addresses, cables and partitions (``Topology``);
* ``processes`` -- a program in a namespace with its log read live, a probe client's answers;
* ``testbed`` -- ``Lab``: the topology plus its hosts' files and tracked processes;
* ``probe``, ``mail`` -- the programs run inside the namespaces (probe client and responder,
  SMTP sink);
* ``settings`` -- ``LabSettings``, what one ``ipfailover lab`` was asked to do;
* ``scenario`` -- the timed phases (failover, failback, graceful stop, restart);
* ``report`` -- the printed and JSON results, and the plot;
* ``faults`` -- ``FaultInjector`` (loss, partitions, flaps, signals, floods); ``flood`` -- the
  multi-process flood for the benchmark;
* ``faultrun`` -- the pair under fault, watched; ``invariants`` -- the checker; ``cases`` -- the
  fault cases of issue 8;
* ``cli`` -- the options and the ``ipfailover lab`` entry point;
* ``fuzz`` (with ``mutator`` and ``snapshot``) -- the in-memory fuzzing of both cores.
"""
