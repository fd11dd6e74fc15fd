"""Packaged recipes (YAML). `rlkit run NAME` finds them by file stem."""
