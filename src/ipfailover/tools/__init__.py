"""The admin's commands: check, status, units, process/notify, man pages, completion."""
