"""The one executor of a takeover or a release, shared by failoverd and `ipfailover process`."""
