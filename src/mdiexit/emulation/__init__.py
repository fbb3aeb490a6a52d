"""Emulating an edge network on one machine (DESIGN §7): device slowdown and paced links."""

from mdiexit.emulation.link import LinkPacer, TokenBucket

__all__ = ["LinkPacer", "TokenBucket"]
