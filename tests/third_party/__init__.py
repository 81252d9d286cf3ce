"""Code vendored verbatim from other projects (each folder says from where and under which licence)."""
