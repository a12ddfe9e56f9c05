"""rat: a single-threaded, edge-triggered epoll TCP line-broadcast server."""

__version__ = "0.1.0"
