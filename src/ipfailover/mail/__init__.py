"""Notices: the mail text, the on-disk spool and background delivery."""
