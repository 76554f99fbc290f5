"""Persistent RPC: the status machine (:mod:`.status`) and the lifecycle
engine that drives stored calls through it (:mod:`.persistent`).

Nothing is imported here: the store imports :mod:`.status`, and
:mod:`.persistent` imports the store.
"""
