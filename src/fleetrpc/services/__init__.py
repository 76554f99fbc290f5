"""Services served on the dispatch core (Elves' ops-automation protocol, ...)."""
