"""Build-time generators that read every program's parser: man pages and shell completion."""
