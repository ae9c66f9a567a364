"""redirect: the kernel side. Loads bpf/ programs with bcc, writes pinned maps
from the compiled state, attaches tc programs and sets up proxy plumbing."""
