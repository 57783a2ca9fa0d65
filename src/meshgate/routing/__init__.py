"""Pure routing: the immutable table both planes share, and how it is built."""
