"""Pure configuration: text and objects in, validated `Config` out (no I/O)."""
